//! The PostgreSQL backend: the only code in queuectl that speaks SQL to PostgreSQL.
//!
//! Many supervisors (one per host) share one database. A job's state is its row in `jobs`;
//! every change is one statement (or one transaction), so the database alone keeps the queue
//! consistent whoever writes. Reservation takes the best ready row with
//! `FOR UPDATE SKIP LOCKED`, so concurrent supervisors never take the same job and never wait for
//! each other; finishing a job and reserving the worker's next one is one statement, one round
//! trip.
//!
//! Time: a store normally reads the database's clock (every host then agrees on when a retry is
//! due, however skewed their own clocks are) and ignores the `now` it is given. Tests drive the
//! clock instead with [`PgStore::use_caller_clock`].
//!
//! Each store has an owner key: the jobs it reserves carry it, and only that owner may finish or
//! release them. Durability: every statement commits before it returns (`flush` has nothing
//! left to do).

pub mod listen;
pub mod schema;
#[doc(hidden)]
pub mod scratch;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use crate::model::{
    Config, ConfigKey, Counts, Job, JobState, Millis, NewJob, RetryDecision, RunOutput,
};
use crate::store::{
    FailOrDone, FailResult, HostInfo, JobStore, ListOrder, ListPage, PurgeStep, RunEnd, StoreError,
    TurnOutcome, VerifyReport,
};

/// Times handed to the database are clamped to this (about the year 192,000), so that adding a
/// retry delay never leaves PostgreSQL's range of timestamps.
const MAX_MS: i64 = 6_000_000_000_000_000;

/// Jobs fetched per round trip when reading all of them.
const PAGE: i64 = 1000;

/// How long sent data may stay unacknowledged before the connection counts as lost.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting may take before it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first and the longest pause between two tries to reach a database that is unreachable.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A client error, shown with the server's own message when there is one (the client's
/// `Display` says only "db error").
#[derive(Debug)]
struct PgError(postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{}", db.message()),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Backend(Box::new(PgError(e)))
    }
}

/// The columns of a job, in the order [`job_from_row`] reads them.
macro_rules! job_cols {
    () => {
        "id, command, state::text AS state, attempts, max_retries, \
         (extract(epoch FROM created_at) * 1000)::bigint AS created_ms, \
         (extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms, \
         (extract(epoch FROM available_at) * 1000)::bigint AS available_ms, \
         locked_by, (extract(epoch FROM locked_at) * 1000)::bigint AS locked_ms, \
         last_error, priority, timeout_ms, seq, pgid, runs, cwd, env::text AS env"
    };
}

/// The current time in SQL: the caller's (parameter `$p`, milliseconds) when given, else the
/// database's clock (the statement's start, to the millisecond).
macro_rules! now {
    ($p:literal) => {
        concat!(
            "COALESCE(timestamptz 'epoch' + ",
            $p,
            "::bigint * interval '1 millisecond', \
             date_trunc('milliseconds', statement_timestamp()))"
        )
    };
}

/// Milliseconds (`$p`, may be NULL) as a timestamp.
macro_rules! ts {
    ($p:literal) => {
        concat!(
            "(timestamptz 'epoch' + ",
            $p,
            "::bigint * interval '1 millisecond')"
        )
    };
}

/// The reservation's `SET` list: `$worker`, `$now`, `$owner`, `$lease` are parameter numbers.
macro_rules! take_set {
    ($worker:literal, $now:literal, $owner:literal, $lease:literal) => {
        concat!(
            "state = 'processing', locked_by = ",
            $worker,
            ", locked_at = ",
            now!($now),
            ", updated_at = ",
            now!($now),
            ", runs = runs + 1, pgid = NULL, cancel_requested = false, owner = ",
            $owner,
            ", lease_until = ",
            now!($now),
            " + ",
            $lease,
            "::bigint * interval '1 millisecond'"
        )
    };
}

/// The id of the best job ready at `$now`, locked, skipping rows other sessions hold.
macro_rules! next_ready {
    ($now:literal) => {
        concat!(
            "(SELECT id FROM jobs WHERE state IN ('pending', 'failed') AND available_at <= ",
            now!($now),
            " ORDER BY priority DESC, available_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
        )
    };
}

/// Ending an attempt, by `$mode`: `ok` completes; `cancel` moves the job to `dead` with error
/// `$err` and its attempts unchanged; `fail` applies the retry rule with error `$err` and
/// backoff base `$base` (delay base ^ attempts seconds, saturating at 10^12 s, about 31,700
/// years, so that the time stays within PostgreSQL's range). Only the owner `$owner` may end it,
/// and only its attempt `$run` (NULL: whichever): a finish sent again after its answer was lost
/// can never end a later attempt.
macro_rules! finish_update {
    ($id:literal, $mode:literal, $err:literal, $base:literal, $now:literal, $owner:literal, $run:literal) => {
        concat!(
            "UPDATE jobs SET ",
            finish_set!($mode, $err, $base, $now),
            " WHERE id = ",
            $id,
            " AND state = 'processing' AND owner = ",
            $owner,
            " AND (",
            $run,
            "::bigint IS NULL OR runs = ",
            $run,
            "::bigint)"
        )
    };
}

/// The `SET` list of [`finish_update`].
macro_rules! finish_set {
    ($mode:literal, $err:literal, $base:literal, $now:literal) => {
        concat!(
            "state = (CASE ", $mode, "::text WHEN 'ok' THEN 'completed' WHEN 'cancel' THEN 'dead' \
                      ELSE CASE WHEN attempts + 1 >= max_retries THEN 'dead' ELSE 'failed' END \
                      END)::queuectl_state, \
             attempts = CASE WHEN ", $mode, "::text = 'fail' THEN attempts + 1 ELSE attempts END, \
             last_error = CASE WHEN ", $mode, "::text = 'ok' THEN last_error ELSE ", $err, "::text END, \
             available_at = CASE WHEN ", $mode, "::text <> 'fail' OR attempts + 1 >= max_retries \
                 THEN NULL ELSE ", now!($now), " + LEAST(power(", $base, "::bigint::numeric, \
                 LEAST(attempts + 1, 64)), 1000000000000)::bigint * interval '1 second' END, \
             locked_by = NULL, locked_at = NULL, pgid = NULL, owner = NULL, lease_until = NULL, \
             cancel_requested = false, updated_at = ", now!($now)
        )
    };
}

/// A turn of the supervisor's loop in one statement: ends the attempts `$1` (ids), `$2`
/// (modes), `$3` (errors), `$4` (attempts, NULL: whichever), `$5` (backoff bases), at `$6`,
/// owner `$7`, and reserves a due job for each worker of `$8` (in order; fewer when fewer are
/// due) with lease `$9`. Rows: `k` 0 for an ended job, 1 for a reserved one (`slot`: the
/// worker's place in `$8`, from 1).
const SQL_FINISH_AND_RESERVE_BATCH: &str = concat!(
    "WITH f AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], \
     $5::bigint[]) AS f(f_id, f_mode, f_err, f_run, f_base)), \
     fin AS (UPDATE jobs SET ",
    finish_set!("f.f_mode", "f.f_err", "f.f_base", "$6"),
    " FROM f WHERE jobs.id = f.f_id AND jobs.state = 'processing' AND jobs.owner = $7 \
     AND (f.f_run IS NULL OR jobs.runs = f.f_run) RETURNING 0 AS k, 0::bigint AS slot, ",
    job_cols!(),
    "), pick AS (SELECT p_id, row_number() OVER () AS p_slot FROM (SELECT id AS p_id FROM jobs \
     WHERE state IN ('pending', 'failed') AND available_at <= ",
    now!("$6"),
    " ORDER BY priority DESC, available_at, seq LIMIT cardinality($8::text[]) \
     FOR UPDATE SKIP LOCKED) AS ready), \
     nxt AS (UPDATE jobs SET ",
    take_set!("($8::text[])[pick.p_slot]", "$6", "$7", "$9"),
    " FROM pick WHERE jobs.id = pick.p_id RETURNING 1 AS k, pick.p_slot AS slot, ",
    job_cols!(),
    ") SELECT * FROM fin UNION ALL SELECT * FROM nxt ORDER BY k, slot"
);

const SQL_GET: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE id = $1 AND state <> 'staged'"
);

const SQL_RESERVE: &str = concat!(
    "UPDATE jobs SET ",
    take_set!("$1", "$2", "$3", "$4"),
    " WHERE id = ",
    next_ready!("$2"),
    " RETURNING ",
    job_cols!()
);

const SQL_RESERVE_ID: &str = concat!(
    "UPDATE jobs SET ",
    take_set!("$1", "$2", "$3", "$4"),
    " WHERE id = $5 AND state IN ('pending', 'failed') RETURNING ",
    job_cols!()
);

const SQL_FINISH: &str = concat!(
    finish_update!("$1", "$2", "$3", "$4", "$5", "$6", "$7"),
    " RETURNING ",
    job_cols!()
);

const SQL_FINISH_AND_RESERVE: &str = concat!(
    "WITH fin AS (",
    finish_update!("$1", "$2", "$3", "$4", "$5", "$6", "$9"),
    " RETURNING 0 AS k, ",
    job_cols!(),
    "), nxt AS (UPDATE jobs SET ",
    take_set!("$7", "$5", "$6", "$8"),
    " WHERE id = ",
    next_ready!("$5"),
    " AND EXISTS (SELECT 1 FROM fin) RETURNING 1 AS k, ",
    job_cols!(),
    ") SELECT * FROM fin UNION ALL SELECT * FROM nxt ORDER BY k"
);

const SQL_SET_PGID: &str = "UPDATE jobs SET pgid = $2 WHERE id = $1 AND state = 'processing' \
     AND owner = $3 AND ($4::bigint IS NULL OR runs = $4::bigint)";

/// Returns a processing job to pending; one whose cancel was asked for (from any host) ends
/// cancelled instead (`$5`): the cancel is not lost with the run. `$6`: whether the run
/// started (a job reserved ahead and never started has its run uncounted).
const SQL_RELEASE: &str = concat!(
    "UPDATE jobs SET state = (CASE WHEN cancel_requested THEN 'dead' ELSE 'pending' END)\
     ::queuectl_state, last_error = (CASE WHEN cancel_requested THEN $5::text \
     ELSE last_error END), runs = (CASE WHEN $6::boolean THEN runs ELSE runs - 1 END), \
     locked_by = NULL, locked_at = NULL, pgid = NULL, \
     owner = NULL, lease_until = NULL, cancel_requested = false, updated_at = ",
    now!("$2"),
    ", available_at = (CASE WHEN cancel_requested THEN NULL ELSE LEAST(COALESCE(available_at, ",
    now!("$2"),
    "), ",
    now!("$2"),
    ") END) WHERE id = $1 AND state = 'processing' AND owner = $3 \
     AND ($4::bigint IS NULL OR runs = $4::bigint) RETURNING ",
    job_cols!()
);

const SQL_DLQ_RETRY: &str = concat!(
    "UPDATE jobs SET state = 'pending', attempts = 0, locked_by = NULL, locked_at = NULL, \
     pgid = NULL, owner = NULL, lease_until = NULL, updated_at = ",
    now!("$2"),
    ", available_at = ",
    now!("$2"),
    " WHERE id = $1 AND state = 'dead' RETURNING ",
    job_cols!()
);

const SQL_CANCEL: &str = concat!(
    "UPDATE jobs SET state = 'dead', last_error = $3, available_at = NULL, locked_by = NULL, \
     locked_at = NULL, pgid = NULL, owner = NULL, lease_until = NULL, updated_at = ",
    now!("$2"),
    " WHERE id = $1 AND state IN ('pending', 'failed') RETURNING ",
    job_cols!()
);

const SQL_REMOVE: &str = concat!(
    "DELETE FROM jobs WHERE id = $1 AND state IN ('completed', 'dead') RETURNING ",
    job_cols!()
);

const SQL_REMOVE_OUTPUT: &str = "DELETE FROM job_output WHERE job_id = $1";

/// One step of retention: the jobs examined (a page of one state in id order), those of them
/// finished before the cut-off deleted with their output.
const SQL_PURGE: &str = concat!(
    "WITH examined AS (SELECT id, updated_at FROM jobs \
     WHERE state = $1::text::queuectl_state AND ($2::text IS NULL OR id > $2::text) \
     ORDER BY id LIMIT $3), \
     gone AS (DELETE FROM jobs j USING examined e \
     WHERE j.id = e.id AND e.updated_at < ",
    ts!("$4"),
    " RETURNING j.id), \
     output AS (DELETE FROM job_output o USING gone g WHERE o.job_id = g.id) \
     SELECT (SELECT count(*) FROM examined), (SELECT max(id) FROM examined), \
     (SELECT count(*) FROM gone)"
);

const SQL_ENQUEUE: &str = concat!(
    "INSERT INTO jobs (id, command, state, attempts, max_retries, created_at, updated_at, \
     available_at, priority, timeout_ms, cwd, env, batch, owner) \
     SELECT u.id, u.command, $10::text::queuectl_state, 0, u.max_retries, ",
    now!("$9"),
    ", ",
    now!("$9"),
    ", COALESCE(",
    ts!("u.run_at"),
    ", ",
    now!("$9"),
    "), u.priority, u.timeout_ms, u.cwd, u.env::jsonb, $11::text, $12::text \
     FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], \
     $6::bigint[], $7::text[], $8::text[]) WITH ORDINALITY \
     AS u(id, command, max_retries, priority, run_at, timeout_ms, cwd, env, ord) \
     ORDER BY u.ord"
);

const SQL_EXISTING: &str =
    "SELECT id, state = 'staged' AND batch IS NOT DISTINCT FROM $2 FROM jobs WHERE id = ANY($1::text[])";

const SQL_PUBLISH: &str = "UPDATE jobs SET state = 'pending', batch = NULL, owner = NULL \
     WHERE state = 'staged' AND batch = $1";

const SQL_DISCARD: &str = "DELETE FROM jobs WHERE state = 'staged' AND batch = $1";

/// The advisory lock class of batches being staged (the other key is `hashtext(batch)`): a
/// session staging a batch holds its lock until it publishes or discards it, so that a batch
/// whose lock is free was left by a command that is gone.
const STAGING_LOCK: i32 = 0x7175_6575; // "queu"

const SQL_LOCK_BATCH: &str = "SELECT pg_advisory_lock($1, hashtext($2))::text";

const SQL_UNLOCK_BATCH: &str = "SELECT pg_advisory_unlock($1, hashtext($2))";

/// Drops the batches this owner staged, and those whose staging session is gone (a command
/// killed or cut off while it stored a bulk enqueue, on any host).
const SQL_DISCARD_ABANDONED: &str = "DELETE FROM jobs WHERE state = 'staged' AND (owner = $1 \
     OR batch IN (SELECT b FROM (SELECT DISTINCT batch AS b FROM jobs WHERE state = 'staged') s \
     WHERE pg_try_advisory_xact_lock($2, hashtext(s.b))))";

const SQL_IS_APPLIED: &str = "SELECT 1 FROM queuectl_applied WHERE request = $1";

const SQL_APPLY_REQUEST: &str =
    "INSERT INTO queuectl_applied (request) VALUES ($1) ON CONFLICT DO NOTHING";

const SQL_PUT_OUTPUT: &str = concat!(
    "INSERT INTO job_output (job_id, run, outcome, finished_at, duration_ms, stdout, stderr) \
     VALUES ($1, $2, $3::text::jsonb, ",
    ts!("$4"),
    ", $5, $6, $7) ON CONFLICT (job_id, run) DO UPDATE SET outcome = EXCLUDED.outcome, \
     finished_at = EXCLUDED.finished_at, duration_ms = EXCLUDED.duration_ms, \
     stdout = EXCLUDED.stdout, stderr = EXCLUDED.stderr"
);

const SQL_OUTPUT: &str = "SELECT run, outcome::text, \
     (extract(epoch FROM finished_at) * 1000)::bigint, duration_ms, stdout, stderr \
     FROM job_output WHERE job_id = $1 AND run = $2";

const SQL_CONFIG_SET: &str = "INSERT INTO config (key, value) VALUES ($1, $2) \
     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";

const SQL_RECOVER: &str = concat!(
    finish_update!("id", "'fail'", "$1", "$2", "$3", "$4", "NULL"),
    " RETURNING ",
    job_cols!()
);

const SQL_LIST_STATE: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state = $1::text::queuectl_state ORDER BY id OFFSET $2 LIMIT $3"
);

const SQL_LIST_ALL: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state <> 'staged' ORDER BY jobs.state, jobs.id OFFSET $1 LIMIT $2"
);

const SQL_PAGE_AFTER: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE (state, id) > ($1::text::queuectl_state, $2) AND state <> 'staged' \
     ORDER BY jobs.state, jobs.id LIMIT $3"
);

const SQL_PAGE_FIRST: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state <> 'staged' ORDER BY jobs.state, jobs.id LIMIT $1"
);

/// A page in id order: `$1` the states (text), `$2` the last id of the previous page ('' for
/// the first), `$3` the page size.
const SQL_PAGE_BY_ID: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state = ANY($1::text[]::queuectl_state[]) AND id > $2 ORDER BY id LIMIT $3"
);

/// A page of the jobs due at `$2` (`$1` the states), in reservation order, after the job
/// (`$3` priority, `$4` available_at ms, `$5` seq) when `$3` is not NULL; `$6` the page size.
const SQL_PAGE_DUE: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state IN ('pending', 'failed')      AND state = ANY($1::text[]::queuectl_state[]) AND available_at <= ",
    now!("$2"),
    " AND ($3::bigint IS NULL OR priority < $3 OR (priority = $3 AND (available_at, seq) > (",
    ts!("$4"),
    ", $5))) ORDER BY priority DESC, available_at, seq LIMIT $6"
);

/// A page of the jobs waiting for a time after `$2` (`$1` the states), earliest first, after
/// the job (`$3` available_at ms, `$4` seq) when `$3` is not NULL; `$5` the page size.
const SQL_PAGE_WAITING: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state IN ('pending', 'failed')      AND state = ANY($1::text[]::queuectl_state[]) AND available_at > ",
    now!("$2"),
    " AND ($3::bigint IS NULL OR (available_at, seq) > (",
    ts!("$3"),
    ", $4)) ORDER BY available_at, seq LIMIT $5"
);

const SQL_COUNTS: &str =
    "SELECT state::text, count(*) FROM jobs WHERE state <> 'staged' GROUP BY state";

const SQL_NEXT_WAKEUP: &str = concat!(
    "SELECT (extract(epoch FROM min(available_at)) * 1000)::bigint FROM jobs \
     WHERE state IN ('pending', 'failed') AND available_at > ",
    now!("$1")
);

const SQL_REGISTER: &str = "INSERT INTO queuectl_supervisors \
     (owner, host, pid, workers, busy, started_at, heartbeat_at) \
     VALUES ($1, $1, $2, $3, 0, statement_timestamp(), statement_timestamp()) \
     ON CONFLICT (owner) DO UPDATE SET pid = EXCLUDED.pid, workers = EXCLUDED.workers, busy = 0, \
     started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at";

/// The heartbeat and the renewal of every lease this owner holds, in one statement; returns
/// the ids still held, each with whether a cancel was asked for.
const SQL_HEARTBEAT: &str = "WITH hb AS (UPDATE queuectl_supervisors \
     SET heartbeat_at = statement_timestamp(), workers = $2, busy = $3 WHERE owner = $1), \
     held AS (UPDATE jobs SET lease_until = statement_timestamp() \
     + $4::bigint * interval '1 millisecond' \
     WHERE state = 'processing' AND owner = $1 RETURNING id, cancel_requested) \
     SELECT id, cancel_requested FROM held";

/// Asks whoever runs job `$1` to stop it (a cancel from any host).
const SQL_REQUEST_CANCEL: &str = concat!(
    "UPDATE jobs SET cancel_requested = true WHERE id = $1 AND state = 'processing' RETURNING ",
    job_cols!()
);

/// Tells every listening supervisor something (channel `$1`, payload `$2`) once this
/// transaction commits.
const SQL_NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// The channel telling idle supervisors that a job may run now or at a new time (enqueued,
/// published, retried, released).
pub const CHANNEL_JOBS: &str = "queuectl_jobs";

/// The channel carrying the id of a running job someone cancelled.
pub const CHANNEL_CANCEL: &str = "queuectl_cancel";

const SQL_UNREGISTER: &str = "DELETE FROM queuectl_supervisors WHERE owner = $1";

const SQL_SUPERVISORS: &str = "SELECT host, pid, workers, busy, \
     (extract(epoch FROM statement_timestamp() - heartbeat_at) * 1000)::bigint \
     FROM queuectl_supervisors ORDER BY host";

/// Ends, by the retry rule, every run whose lease expired (its supervisor stopped renewing);
/// a run whose cancel was asked for ends cancelled (`$2`).
const SQL_REAP: &str = concat!(
    finish_update!(
        "id",
        "(CASE WHEN cancel_requested THEN 'cancel' ELSE 'fail' END)",
        "(CASE WHEN cancel_requested THEN $2::text \
          ELSE 'lease expired: ' || owner || ' stopped renewing it' END)",
        "$1",
        "NULL",
        "owner",
        "NULL"
    ),
    " AND lease_until < statement_timestamp() RETURNING ",
    job_cols!()
);

const SQL_OWN_RUNNING: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state = 'processing' AND owner = $1 ORDER BY id"
);

/// Which clock the store's times come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// The database's: the `now` passed in is ignored.
    Database,
    /// The caller's `now` (tests).
    Caller,
}

/// One connection and the statements prepared on it.
struct Conn {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
    /// Which connection of the store this is (counted from 0): a lost session's locks are gone.
    session: u64,
}

impl Conn {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.prepared.insert(sql, s.clone());
        Ok(s)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let s = self.statement(sql)?;
        Ok(self.client.query(&s, params)?)
    }

    fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        Ok(self.client.execute(&s, params)?)
    }
}

/// The connection, and while the database cannot be reached, when to try again.
struct Link {
    conn: Option<Conn>,
    down: Option<Down>,
}

/// A lost connection: since when, and the backoff of the tries to connect again.
struct Down {
    since: Instant,
    next_try: Instant,
    delay: Duration,
}

/// The queue's state in a PostgreSQL database shared by every host.
pub struct PgStore {
    link: Mutex<Link>,
    /// The attempt (`runs`) of each job this store reserved and has not ended yet: the token
    /// that guards every later write about that attempt.
    runs: Mutex<HashMap<String, i64>>,
    /// Jobs whose last finish was sent but lost its answer with the connection: it may have
    /// been applied.
    uncertain: Mutex<HashSet<String>>,
    /// Connections made so far.
    sessions: AtomicU64,
    /// The batches this store is staging, each with the session holding its lock.
    staging: Mutex<HashMap<String, u64>>,
    config: postgres::Config,
    /// Where the database is, without credentials, for messages.
    target: String,
    /// Marks the jobs this store reserves; only this owner may end them.
    owner: String,
    clock: Clock,
    /// How long a reservation holds before another supervisor may reap it; `None`: forever.
    lease_ms: Option<u64>,
    /// The latest caller time seen (caller clock only): what `next_wakeup` counts from.
    last_now: AtomicU64,
    /// What must outlive the store (a test's private database).
    #[cfg(test)]
    keep: Option<std::sync::Arc<tests::TestDb>>,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`), creating or upgrading
    /// queuectl's tables. `owner` names this store's reservations (unique per supervisor).
    pub fn open(url: &str, owner: &str) -> Result<PgStore, StoreError> {
        let mut config: postgres::Config = url.parse().map_err(|e| StoreError::Open {
            path: redact(url),
            source: Box::new(e),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A lost network fails a statement within seconds instead of hanging it, so that a
        // supervisor notices in time that it cannot renew its leases.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        config.keepalives(true);
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(5));
        }
        if config.get_options().is_none() {
            // The server's notices (a table that already exists...) are no news to a user.
            config.options("-c client_min_messages=warning");
        }
        if config.get_application_name().is_none() {
            config.application_name("queuectl");
        }
        let target = describe(&config);
        let store = PgStore {
            link: Mutex::new(Link {
                conn: None,
                down: None,
            }),
            runs: Mutex::new(HashMap::new()),
            uncertain: Mutex::new(HashSet::new()),
            sessions: AtomicU64::new(0),
            staging: Mutex::new(HashMap::new()),
            config,
            target,
            owner: owner.to_string(),
            clock: Clock::Database,
            lease_ms: None,
            last_now: AtomicU64::new(0),
            #[cfg(test)]
            keep: None,
        };
        {
            let mut guard = store.lock();
            let mut conn = store.connect().map_err(|e| store.open_error(e))?;
            migrate(&mut conn.client).map_err(|e| match e {
                e @ StoreError::Schema { .. } => e,
                e => store.open_error(e),
            })?;
            guard.conn = Some(conn);
        }
        Ok(store)
    }

    /// Times come from the `now` each call is given instead of the database's clock.
    pub fn use_caller_clock(mut self) -> Self {
        self.clock = Clock::Caller;
        self
    }

    /// Reservations hold for `lease_ms` unless renewed.
    pub fn with_lease(mut self, lease_ms: u64) -> Self {
        self.lease_ms = Some(lease_ms);
        self
    }

    /// The key marking this store's reservations.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Where the database is (no credentials).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Registers this owner as a supervisor with `workers` workers (process `pid`).
    pub fn register(&self, pid: u32, workers: u32) -> Result<(), StoreError> {
        let pid = i32::try_from(pid).unwrap_or(i32::MAX);
        let workers = i32::try_from(workers).unwrap_or(i32::MAX);
        self.with(|c| c.execute(SQL_REGISTER, &[&self.owner, &pid, &workers]))?;
        Ok(())
    }

    /// Beats this supervisor's heartbeat and renews the lease of every job it runs, by
    /// `lease_ms` from the database's time; returns the ids of the jobs it still holds, each
    /// with whether a cancel was asked for.
    pub fn heartbeat(
        &self,
        workers: u32,
        busy: u32,
        lease_ms: u64,
    ) -> Result<HashMap<String, bool>, StoreError> {
        let workers = i32::try_from(workers).unwrap_or(i32::MAX);
        let busy = i32::try_from(busy).unwrap_or(i32::MAX);
        let lease = clamp_ms(lease_ms);
        let rows =
            self.with(|c| c.query(SQL_HEARTBEAT, &[&self.owner, &workers, &busy, &lease]))?;
        rows.iter()
            .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, bool>(1)?)))
            .collect()
    }

    /// Asks the supervisor running job `id` to stop it, wherever it runs: it hears at once
    /// (a notification) or at its next lease renewal. Returns the job as it is (still
    /// running); `Running` is never the answer.
    pub fn request_cancel(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.with(|c| {
            let ask = c.statement(SQL_REQUEST_CANCEL)?;
            let notify = c.statement(SQL_NOTIFY)?;
            let mut tx = c.client.transaction()?;
            let rows = tx.query(&ask, &[&id])?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let job = job_from_row(row)?;
            tx.execute(&notify, &[&CHANNEL_CANCEL, &id])?;
            tx.commit()?;
            Ok(Some(job))
        })
    }

    /// Wakes every idle supervisor: a job may run now, or at a new time. A failure only
    /// delays the news until their next look (the poll interval).
    fn announce_jobs(&self) {
        if let Err(e) = self.with(|c| c.execute(SQL_NOTIFY, &[&CHANNEL_JOBS, &""])) {
            tracing::debug!("could not wake the other supervisors: {e}");
        }
    }

    /// Removes this supervisor from the registry (a clean stop).
    pub fn unregister(&self) -> Result<(), StoreError> {
        self.with(|c| c.execute(SQL_UNREGISTER, &[&self.owner]))?;
        Ok(())
    }

    /// Every registered supervisor.
    pub fn supervisors(&self) -> Result<Vec<HostInfo>, StoreError> {
        let rows = self.with(|c| c.query(SQL_SUPERVISORS, &[]))?;
        rows.iter()
            .map(|r| {
                Ok(HostInfo {
                    host: r.try_get(0)?,
                    pid: u32::try_from(r.try_get::<_, i32>(1)?).unwrap_or(0),
                    workers: u32::try_from(r.try_get::<_, i32>(2)?).unwrap_or(0),
                    busy: u32::try_from(r.try_get::<_, i32>(3)?).unwrap_or(0),
                    heartbeat_age_ms: u64::try_from(r.try_get::<_, i64>(4)?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Applies the retry rule to every job whose lease expired, whoever held it.
    pub fn reap_expired(&self, backoff_base: u64) -> Result<Vec<FailResult>, StoreError> {
        let base = clamp_ms(backoff_base);
        let rows = self.with(|c| c.query(SQL_REAP, &[&base, &crate::store::CANCELLED]))?;
        if !rows.is_empty() {
            self.announce_jobs();
        }
        rows.iter()
            .map(|r| Ok(self.fail_result(job_from_row(r)?, backoff_base)))
            .collect()
    }

    /// Returns job `id`, reserved by this owner ahead of time and never started, to the queue
    /// as [`JobStore::release`] does, and uncounts its run (`runs - 1`): as if it had not been
    /// reserved. A cancel asked for meanwhile ends it cancelled.
    pub fn unreserve(&self, id: &str, now: Millis) -> Result<Job, StoreError> {
        self.give_back(id, now, false)
    }

    fn give_back(&self, id: &str, now: Millis, started: bool) -> Result<Job, StoreError> {
        let now = self.now(now);
        let run = self.run_of(id);
        let rows = self.with(|c| {
            c.query(
                SQL_RELEASE,
                &[
                    &id,
                    &now,
                    &self.owner,
                    &run,
                    &crate::store::CANCELLED,
                    &started,
                ],
            )
        })?;
        match rows.first() {
            Some(row) => {
                self.let_go(id);
                let job = job_from_row(row)?;
                if job.state == JobState::Pending {
                    self.announce_jobs();
                }
                Ok(job)
            }
            None => Err(StoreError::NotFound(id.to_string())),
        }
    }

    /// The jobs this owner holds in `processing`.
    pub fn own_running(&self) -> Result<Vec<Job>, StoreError> {
        let rows = self.with(|c| c.query(SQL_OWN_RUNNING, &[&self.owner]))?;
        rows.iter().map(job_from_row).collect()
    }

    fn open_error(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Backend(source) => StoreError::Open {
                path: self.target.clone(),
                source,
            },
            e => e,
        }
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        let client = self.config.connect(NoTls)?;
        Ok(Conn {
            client,
            prepared: HashMap::new(),
            session: self.sessions.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Whether this store stages `batch` already, on `session`: once the session that locked
    /// it is lost, another host may have dropped what it staged, which is an error.
    fn check_staging(&self, session: u64, batch: &str) -> Result<bool, StoreError> {
        match self.staging().get(batch) {
            None => Ok(false),
            Some(s) if *s == session => Ok(true),
            Some(_) => Err(StoreError::Unavailable(
                "the connection was lost while the jobs were being stored (none of them is \
                 enqueued)"
                    .into(),
            )),
        }
    }

    fn staging(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.staging.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets go of the lock of `batch` (published or discarded).
    fn unlock_batch(&self, conn: &mut Conn, batch: &str) {
        if let Some(session) = self.staging().remove(batch) {
            if session == conn.session {
                if let Err(e) = conn.query(SQL_UNLOCK_BATCH, &[&STAGING_LOCK, &batch]) {
                    tracing::debug!("could not unlock batch {batch}: {e}");
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Link> {
        // A panic while holding the lock leaves at worst a connection mid-statement, which the
        // next use detects (closed) and replaces.
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection, connecting again first if it was lost.
    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.attempt(f).map_err(|(e, _)| e)
    }

    /// [`PgStore::with`], whose error also says whether the connection was lost while `f` ran
    /// (what `f` sent may then have been applied, or not). A lost connection is logged once;
    /// it is connected again at the next call, then with a growing pause between tries
    /// ([`RECONNECT_FIRST`] to [`RECONNECT_MAX`]), each failure answered at once with
    /// `Unavailable` in the meantime.
    fn attempt<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, (StoreError, bool)> {
        let mut link = self.lock();
        if !matches!(link.conn.as_ref(), Some(c) if !c.client.is_closed()) {
            if link.conn.take().is_some() {
                self.went_down(&mut link, "the connection closed");
            }
            let now = Instant::now();
            if let Some(d) = &link.down {
                if now < d.next_try {
                    return Err((
                        StoreError::Unavailable(format!(
                            "{} (next try in {}ms)",
                            self.target,
                            d.next_try.saturating_duration_since(now).as_millis()
                        )),
                        false,
                    ));
                }
            }
            match self.connect() {
                Ok(conn) => {
                    if let Some(d) = link.down.take() {
                        tracing::info!(
                            "connected to the database at {} again after {:.1}s",
                            self.target,
                            d.since.elapsed().as_secs_f64()
                        );
                    }
                    link.conn = Some(conn);
                }
                Err(e) => {
                    let d = link.down.get_or_insert(Down {
                        since: now,
                        next_try: now,
                        delay: Duration::ZERO,
                    });
                    d.delay = (d.delay * 2).clamp(RECONNECT_FIRST, RECONNECT_MAX);
                    d.next_try = now + d.delay;
                    tracing::warn!(
                        "cannot reach the database at {}: {e}; trying again in {}ms",
                        self.target,
                        d.delay.as_millis()
                    );
                    return Err((StoreError::Unavailable(e.to_string()), false));
                }
            }
        }
        let Some(conn) = link.conn.as_mut() else {
            return Err((StoreError::Unavailable(self.target.clone()), false));
        };
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                let lost = conn.client.is_closed() || connection_lost(&e);
                if lost {
                    link.conn = None;
                    self.went_down(&mut link, &e.to_string());
                }
                Err((e, lost))
            }
        }
    }

    /// Notes (and logs) a lost connection; the next call connects again at once.
    fn went_down(&self, link: &mut Link, why: &str) {
        if link.down.is_none() {
            tracing::warn!(
                "lost the connection to the database at {}: {why}; connecting again",
                self.target
            );
            let now = Instant::now();
            link.down = Some(Down {
                since: now,
                next_try: now,
                delay: Duration::ZERO,
            });
        }
    }

    /// The attempt of job `id` this store reserved, if it did.
    fn run_of(&self, id: &str) -> Option<i64> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    /// [`attempt`](Self::attempt) for a statement that ends the attempts of `ids`: when the
    /// connection is lost on the way, whether they ended is unknown, and they are marked so.
    fn attempt_ending<T>(
        &self,
        ids: &[&str],
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.attempt(f).map_err(|(e, lost)| {
            if lost {
                let mut uncertain = self.uncertain.lock().unwrap_or_else(|p| p.into_inner());
                uncertain.extend(ids.iter().map(|id| id.to_string()));
            }
            e
        })
    }

    fn hold(&self, job: &Job) {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.id.clone(), i64::from(job.runs));
    }

    fn let_go(&self, id: &str) {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Ends the attempt of job `id` (guarded by its token) and, with `next`
    /// (`worker`, `lease`), reserves that worker's next job in the same statement.
    ///
    /// When the connection is lost on the way the outcome is unknown: the job is marked
    /// uncertain and the error returned; the caller sends the finish again later. Guarded
    /// by the attempt, a finish applied twice changes nothing the second time; one that
    /// finds its attempt already ended after an unknown outcome answers with the job as it
    /// is now (the first one was applied, or another supervisor reaped the attempt).
    fn end_attempt(
        &self,
        id: &str,
        end: &RunEnd<'_>,
        now: Millis,
        next: Option<(&str, Option<i64>)>,
    ) -> Result<(FailOrDone, Option<Job>), StoreError> {
        let (mode, error, base) = end_params(end);
        let now = self.now(now);
        let run = self.run_of(id);
        let rows = self.attempt_ending(&[id], |c| match next {
            None => c.query(
                SQL_FINISH,
                &[&id, &mode, &error, &base, &now, &self.owner, &run],
            ),
            Some((worker, lease)) => c.query(
                SQL_FINISH_AND_RESERVE,
                &[
                    &id,
                    &mode,
                    &error,
                    &base,
                    &now,
                    &self.owner,
                    &worker,
                    &lease,
                    &run,
                ],
            ),
        })?;
        let was_uncertain = self
            .uncertain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let mut done = None;
        let mut taken = None;
        for row in &rows {
            let k: i32 = if next.is_some() { row.try_get("k")? } else { 0 };
            let job = job_from_row(row)?;
            if k == 0 {
                done = Some(job);
            } else {
                taken = Some(job);
            }
        }
        let done = match done {
            Some(job) => job,
            None if was_uncertain => {
                let job = self
                    .get(id)?
                    .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
                tracing::info!(
                    "the end of job {id} was recorded before the connection was lost \
                     (now {})",
                    job.state
                );
                job
            }
            None => return Err(StoreError::NotFound(id.to_string())),
        };
        self.let_go(id);
        if let Some(job) = &taken {
            self.hold(job);
        }
        let result = self.done_or_failed(done, end);
        if matches!(
            &result,
            FailOrDone::Failed(FailResult {
                decision: RetryDecision::Retry { .. },
                ..
            })
        ) {
            self.announce_jobs();
        }
        Ok((result, taken))
    }

    /// The `now` parameter: the caller's time, or NULL for the database's clock.
    fn now(&self, now: Millis) -> Option<i64> {
        match self.clock {
            Clock::Database => None,
            Clock::Caller => {
                self.last_now.fetch_max(now, Ordering::Relaxed);
                Some(clamp_ms(now))
            }
        }
    }

    fn lease(&self) -> Option<i64> {
        self.lease_ms.map(clamp_ms)
    }

    /// Stores `jobs`: pending (applying `request` once), or staged under `batch`.
    fn insert(
        &self,
        jobs: &[NewJob],
        config: &Config,
        now: Millis,
        request: Option<&str>,
        batch: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut seen = HashSet::with_capacity(jobs.len());
        for j in jobs {
            if !seen.insert(j.id.as_str()) {
                return Err(StoreError::DuplicateInBatch(j.id.clone()));
            }
        }
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        let commands: Vec<&str> = jobs.iter().map(|j| j.command.as_str()).collect();
        let max_retries: Vec<i64> = jobs
            .iter()
            .map(|j| i64::from(j.max_retries.unwrap_or(config.max_retries)))
            .collect();
        let priorities: Vec<i64> = jobs.iter().map(|j| j.priority).collect();
        let run_at: Vec<Option<i64>> = jobs.iter().map(|j| j.run_at.map(clamp_ms)).collect();
        let timeouts: Vec<Option<i64>> = jobs.iter().map(|j| j.timeout_ms.map(clamp_ms)).collect();
        let cwds: Vec<Option<&str>> = jobs.iter().map(|j| j.cwd.as_deref()).collect();
        let envs: Vec<String> = jobs
            .iter()
            .map(|j| serde_json::to_string(&j.env).map_err(|e| StoreError::Encode(e.to_string())))
            .collect::<Result<_, _>>()?;
        let now = self.now(now);
        let state = if batch.is_some() { "staged" } else { "pending" };
        let owner = batch.map(|_| self.owner.as_str());
        let res = self.with(|c| {
            let insert = c.statement(SQL_ENQUEUE)?;
            let existing = c.statement(SQL_EXISTING)?;
            let apply = c.statement(SQL_APPLY_REQUEST)?;
            let applied = c.statement(SQL_IS_APPLIED)?;
            let notify = c.statement(SQL_NOTIFY)?;
            let lock = c.statement(SQL_LOCK_BATCH)?;
            let session = c.session;
            let mut tx = c.client.transaction()?;
            if let Some(req) = request {
                if tx.execute(&apply, &[&req])? == 0 {
                    return Ok(()); // applied before
                }
            }
            if let Some(b) = batch {
                if !tx.query(&applied, &[&b])?.is_empty() {
                    return Err(StoreError::BatchPublished(b.to_string()));
                }
                if !self.check_staging(session, b)? {
                    // Held by this session from before its first row is visible to others
                    // (a session lock outlives the transaction, whatever its outcome).
                    tx.query(&lock, &[&STAGING_LOCK, &b])?;
                    self.staging().insert(b.to_string(), session);
                }
            }
            if let Some(e) = first_existing(&mut tx, &existing, &ids, batch)? {
                return Err(e);
            }
            if batch.is_none() {
                tx.execute(&notify, &[&CHANNEL_JOBS, &""])?;
            }
            tx.execute(
                &insert,
                &[
                    &ids,
                    &commands,
                    &max_retries,
                    &priorities,
                    &run_at,
                    &timeouts,
                    &cwds,
                    &envs,
                    &now,
                    &state,
                    &batch,
                    &owner,
                ],
            )?;
            tx.commit()?;
            Ok(())
        });
        match res {
            Err(StoreError::Backend(e)) if is_unique_violation(&*e) => {
                // Another process stored one of these ids in between: name it.
                let dup = self.with(|c| {
                    let existing = c.statement(SQL_EXISTING)?;
                    let mut tx = c.client.transaction()?;
                    first_existing(&mut tx, &existing, &ids, batch)
                })?;
                Err(dup.unwrap_or(StoreError::Backend(e)))
            }
            res => res,
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

    fn fail_result(&self, job: Job, backoff_base: u64) -> FailResult {
        let decision = match (job.state, job.available_at) {
            (JobState::Failed, Some(at)) => RetryDecision::Retry {
                at,
                delay_secs: backoff_base.saturating_pow(job.attempts),
            },
            _ => RetryDecision::Dead,
        };
        FailResult { job, decision }
    }

    fn done_or_failed(&self, job: Job, end: &RunEnd<'_>) -> FailOrDone {
        match end {
            RunEnd::Succeeded => FailOrDone::Done(job),
            RunEnd::Failed { backoff_base, .. } => {
                FailOrDone::Failed(self.fail_result(job, *backoff_base))
            }
            RunEnd::Cancelled => FailOrDone::Failed(FailResult {
                job,
                decision: RetryDecision::Dead,
            }),
        }
    }
}

impl JobStore for PgStore {
    /// Every statement has committed before it returned.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn enqueue(
        &self,
        jobs: &[NewJob],
        config: &Config,
        now: Millis,
        request: Option<&str>,
    ) -> Result<(), StoreError> {
        self.insert(jobs, config, now, request, None)
    }

    fn stage(
        &self,
        batch: &str,
        jobs: &[NewJob],
        config: &Config,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.insert(jobs, config, now, None, Some(batch))
    }

    fn publish(&self, batch: &str, _now: Millis) -> Result<u64, StoreError> {
        self.with(|c| {
            self.check_staging(c.session, batch)?;
            let publish = c.statement(SQL_PUBLISH)?;
            let apply = c.statement(SQL_APPLY_REQUEST)?;
            let notify = c.statement(SQL_NOTIFY)?;
            let mut tx = c.client.transaction()?;
            let n = tx.execute(&publish, &[&batch])?;
            tx.execute(&apply, &[&batch])?;
            if n > 0 {
                tx.execute(&notify, &[&CHANNEL_JOBS, &""])?;
            }
            tx.commit()?;
            self.unlock_batch(c, batch);
            Ok(n)
        })
    }

    fn discard(&self, batch: &str) -> Result<u64, StoreError> {
        if self.is_applied(batch)? {
            return Err(StoreError::BatchPublished(batch.to_string()));
        }
        self.with(|c| {
            let n = c.execute(SQL_DISCARD, &[&batch])?;
            self.unlock_batch(c, batch);
            Ok(n)
        })
    }

    /// Drops the batches this owner staged and never published, and any batch whose staging
    /// session is gone (its command was killed or cut off, on whichever host); a batch still
    /// being staged is kept.
    fn discard_unpublished(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            c.execute(
                SQL_DISCARD_ABANDONED,
                &[&self.owner.as_str(), &STAGING_LOCK],
            )
        })
    }

    fn is_applied(&self, request: &str) -> Result<bool, StoreError> {
        Ok(!self
            .with(|c| c.query(SQL_IS_APPLIED, &[&request]))?
            .is_empty())
    }

    fn reserve(&self, worker: &str, now: Millis) -> Result<Option<Job>, StoreError> {
        let now = self.now(now);
        let lease = self.lease();
        let rows = self.with(|c| c.query(SQL_RESERVE, &[&worker, &now, &self.owner, &lease]))?;
        let job = rows.first().map(job_from_row).transpose()?;
        if let Some(job) = &job {
            self.hold(job);
        }
        Ok(job)
    }

    fn reserve_id(&self, id: &str, worker: &str, now: Millis) -> Result<Option<Job>, StoreError> {
        let now = self.now(now);
        let lease = self.lease();
        let rows =
            self.with(|c| c.query(SQL_RESERVE_ID, &[&worker, &now, &self.owner, &lease, &id]))?;
        rows.first().map(job_from_row).transpose()
    }

    fn finish_and_reserve(
        &self,
        id: &str,
        end: &RunEnd<'_>,
        worker: &str,
        now: Millis,
    ) -> Result<(FailOrDone, Option<Job>), StoreError> {
        self.end_attempt(id, end, now, Some((worker, self.lease())))
    }

    /// One statement, committed on its own (one wait for the disk for the whole turn).
    fn finish_and_reserve_batch(
        &self,
        ends: &[(&str, RunEnd<'_>)],
        workers: &[&str],
        now: Millis,
    ) -> Result<TurnOutcome, StoreError> {
        let ids: Vec<&str> = ends.iter().map(|(id, _)| *id).collect();
        let params: Vec<_> = ends.iter().map(|(_, end)| end_params(end)).collect();
        let modes: Vec<&str> = params.iter().map(|p| p.0).collect();
        let errors: Vec<Option<&str>> = params.iter().map(|p| p.1).collect();
        let bases: Vec<i64> = params.iter().map(|p| p.2).collect();
        let runs: Vec<Option<i64>> = ids.iter().map(|id| self.run_of(id)).collect();
        let now = self.now(now);
        let lease = self.lease();
        let rows = self.attempt_ending(&ids, |c| {
            c.query(
                SQL_FINISH_AND_RESERVE_BATCH,
                &[
                    &ids,
                    &modes,
                    &errors,
                    &runs,
                    &bases,
                    &now,
                    &self.owner,
                    &workers,
                    &lease,
                ],
            )
        })?;
        let mut ended = HashMap::with_capacity(ends.len());
        let mut taken = Vec::with_capacity(workers.len());
        for row in &rows {
            let job = job_from_row(row)?;
            if row.try_get::<_, i32>("k")? == 0 {
                ended.insert(job.id.clone(), job);
            } else {
                self.hold(&job);
                taken.push(job);
            }
        }
        let mut results = Vec::with_capacity(ends.len());
        let mut retried = false;
        for (id, end) in ends {
            let Some(job) = ended.remove(*id) else {
                results.push(Err(StoreError::NotFound(id.to_string())));
                continue;
            };
            self.let_go(id);
            let result = self.done_or_failed(job, end);
            retried |= matches!(
                &result,
                FailOrDone::Failed(FailResult {
                    decision: RetryDecision::Retry { .. },
                    ..
                })
            );
            results.push(Ok(result));
        }
        if retried {
            self.announce_jobs();
        }
        Ok((results, taken))
    }

    fn finish(&self, id: &str, end: &RunEnd<'_>, now: Millis) -> Result<FailOrDone, StoreError> {
        self.end_attempt(id, end, now, None).map(|(done, _)| done)
    }

    fn set_pgid(&self, id: &str, pgid: i32) -> Result<(), StoreError> {
        let run = self.run_of(id);
        let n = self.with(|c| c.execute(SQL_SET_PGID, &[&id, &pgid, &self.owner, &run]))?;
        if n == 0 {
            return Err(StoreError::NotFound(id.to_string()));
        }
        Ok(())
    }

    fn release(&self, id: &str, now: Millis) -> Result<Job, StoreError> {
        self.give_back(id, now, true)
    }

    fn dlq_retry(&self, id: &str, now: Millis, request: Option<&str>) -> Result<Job, StoreError> {
        let now = self.now(now);
        let res = self.with(|c| {
            let retry = c.statement(SQL_DLQ_RETRY)?;
            let apply = c.statement(SQL_APPLY_REQUEST)?;
            let notify = c.statement(SQL_NOTIFY)?;
            let mut tx = c.client.transaction()?;
            if let Some(req) = request {
                if tx.execute(&apply, &[&req])? == 0 {
                    return Ok(None); // applied before
                }
            }
            let rows = tx.query(&retry, &[&id, &now])?;
            let Some(row) = rows.first() else {
                return Err(StoreError::NotFound(id.to_string()));
            };
            let job = job_from_row(row)?;
            tx.execute(&notify, &[&CHANNEL_JOBS, &""])?;
            tx.commit()?;
            Ok(Some(job))
        });
        match res {
            Ok(Some(job)) => Ok(job),
            Ok(None) => self.get(id)?.ok_or_else(|| StoreError::NotFound(id.into())),
            Err(StoreError::NotFound(_)) => Err(self.not_in_state(id, JobState::Dead)),
            Err(e) => Err(e),
        }
    }

    fn put_output(&self, id: &str, output: &RunOutput) -> Result<(), StoreError> {
        let outcome = serde_json::to_string(&output.outcome)
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        let run = i64::from(output.run);
        let finished = clamp_ms(output.finished_at);
        let duration = clamp_ms(output.duration_ms);
        self.with(|c| {
            c.execute(
                SQL_PUT_OUTPUT,
                &[
                    &id,
                    &run,
                    &outcome,
                    &finished,
                    &duration,
                    &output.stdout,
                    &output.stderr,
                ],
            )
        })?;
        Ok(())
    }

    fn output(&self, id: &str, run: u32) -> Result<Option<RunOutput>, StoreError> {
        let run = i64::from(run);
        let rows = self.with(|c| c.query(SQL_OUTPUT, &[&id, &run]))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let corrupt = |detail: String| StoreError::Corrupt {
            tree: "job_output",
            detail,
        };
        let outcome: String = row.try_get(1)?;
        Ok(Some(RunOutput {
            run: to_u32(row.try_get(0)?, "job_output.run")?,
            outcome: serde_json::from_str(&outcome).map_err(|e| corrupt(e.to_string()))?,
            finished_at: to_u64(row.try_get(2)?, "job_output.finished_at")?,
            duration_ms: to_u64(row.try_get(3)?, "job_output.duration_ms")?,
            stdout: row.try_get(4)?,
            stderr: row.try_get(5)?,
        }))
    }

    fn config_set(
        &self,
        key: ConfigKey,
        value: u64,
        request: Option<&str>,
    ) -> Result<(), StoreError> {
        let value = value.to_string();
        self.with(|c| {
            let set = c.statement(SQL_CONFIG_SET)?;
            let apply = c.statement(SQL_APPLY_REQUEST)?;
            let mut tx = c.client.transaction()?;
            if let Some(req) = request {
                if tx.execute(&apply, &[&req])? == 0 {
                    return Ok(());
                }
            }
            tx.execute(&set, &[&key.as_str(), &value])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn config(&self) -> Result<Config, StoreError> {
        let rows = self.with(|c| c.query("SELECT key, value FROM config", &[]))?;
        let mut cfg = Config::default();
        for row in rows {
            let key: String = row.try_get(0)?;
            let value: String = row.try_get(1)?;
            let Ok(key) = key.parse::<ConfigKey>() else {
                continue; // a key from a newer version: ignored
            };
            let value = key.parse_value(&value).map_err(|_| StoreError::Corrupt {
                tree: "config",
                detail: format!("bad value for {}", key.as_str()),
            })?;
            cfg.set(key, value);
        }
        Ok(cfg)
    }

    fn forget_applied(&self) -> Result<(), StoreError> {
        self.with(|c| c.execute("DELETE FROM queuectl_applied", &[]))?;
        Ok(())
    }

    /// Applies the retry rule to this owner's jobs left in `processing` (a previous run of the
    /// same supervisor died); other owners' jobs are theirs until their leases expire.
    fn recover_interrupted(
        &self,
        error: &str,
        backoff_base: u64,
        now: Millis,
    ) -> Result<Vec<FailResult>, StoreError> {
        let base = clamp_ms(backoff_base);
        let now = self.now(now);
        let rows = self.with(|c| c.query(SQL_RECOVER, &[&error, &base, &now, &self.owner]))?;
        let mut out = rows
            .iter()
            .map(|r| Ok(self.fail_result(job_from_row(r)?, backoff_base)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| a.job.id.cmp(&b.job.id));
        Ok(out)
    }

    fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let rows = self.with(|c| c.query(SQL_GET, &[&id]))?;
        rows.first().map(job_from_row).transpose()
    }

    fn list(
        &self,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.with(|c| match state {
            Some(st) => c.query(SQL_LIST_STATE, &[&st.as_str(), &offset, &limit]),
            None => c.query(SQL_LIST_ALL, &[&offset, &limit]),
        })?;
        rows.iter().map(job_from_row).collect()
    }

    fn list_page(
        &self,
        states: &[JobState],
        order: ListOrder,
        after: Option<&[u8]>,
        limit: usize,
        now: Millis,
    ) -> Result<ListPage, StoreError> {
        let states: Vec<&str> = if states.is_empty() {
            JobState::ALL.iter().map(|s| s.as_str()).collect()
        } else {
            states.iter().map(|s| s.as_str()).collect()
        };
        if limit == 0 {
            return Ok(ListPage::default());
        }
        let size = i64::try_from(limit).unwrap_or(i64::MAX);
        match order {
            ListOrder::Id => {
                let after = match after {
                    None => String::new(),
                    Some(a) => String::from_utf8(a.to_vec()).map_err(|_| StoreError::BadCursor)?,
                };
                let rows = self.with(|c| c.query(SQL_PAGE_BY_ID, &[&states, &after, &size]))?;
                let jobs: Vec<Job> = rows.iter().map(job_from_row).collect::<Result<_, _>>()?;
                let next = match jobs.last() {
                    Some(last) if jobs.len() == limit => Some(last.id.as_bytes().to_vec()),
                    _ => None,
                };
                Ok(ListPage { jobs, next })
            }
            ListOrder::NextRun => {
                // The cursor: phase (0: due, 1: waiting), priority, available_at, seq.
                let cursor = match after {
                    None => None,
                    Some(a) => Some(RunCursor::decode(a).ok_or(StoreError::BadCursor)?),
                };
                let now = self.now(now);
                let mut jobs: Vec<Job> = Vec::new();
                let mut phase = cursor.as_ref().map_or(0, |c| c.phase);
                if phase == 0 {
                    let (p, at, seq) = match &cursor {
                        Some(c) => (Some(c.priority), c.available_at, c.seq),
                        None => (None, 0, 0),
                    };
                    let rows = self
                        .with(|c| c.query(SQL_PAGE_DUE, &[&states, &now, &p, &at, &seq, &size]))?;
                    for row in &rows {
                        jobs.push(job_from_row(row)?);
                    }
                }
                if jobs.len() < limit {
                    let (at, seq) = match &cursor {
                        Some(c) if c.phase == 1 => (Some(c.available_at), c.seq),
                        _ => (None, 0),
                    };
                    let rest = i64::try_from(limit - jobs.len()).unwrap_or(i64::MAX);
                    let rows = self
                        .with(|c| c.query(SQL_PAGE_WAITING, &[&states, &now, &at, &seq, &rest]))?;
                    if !rows.is_empty() {
                        phase = 1;
                    }
                    for row in &rows {
                        jobs.push(job_from_row(row)?);
                    }
                }
                let next = match jobs.last() {
                    Some(last) if jobs.len() == limit => Some(
                        RunCursor {
                            phase,
                            priority: last.priority,
                            available_at: clamp_ms(last.available_at.unwrap_or(0)),
                            seq: i64::try_from(last.seq).unwrap_or(i64::MAX),
                        }
                        .encode(),
                    ),
                    _ => None,
                };
                Ok(ListPage { jobs, next })
            }
        }
    }

    fn all_jobs(&self) -> Box<dyn Iterator<Item = Result<Job, StoreError>> + '_> {
        Box::new(AllJobs {
            store: self,
            page: Vec::new().into_iter(),
            after: None,
            done: false,
        })
    }

    fn counts(&self) -> Result<Counts, StoreError> {
        let rows = self.with(|c| c.query(SQL_COUNTS, &[]))?;
        let mut counts = Counts::default();
        for row in rows {
            let state: String = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            counts.set(parse_state(&state)?, to_u64(n, "count")?);
        }
        Ok(counts)
    }

    fn next_wakeup(&self) -> Result<Option<Millis>, StoreError> {
        let now = match self.clock {
            Clock::Database => None,
            Clock::Caller => Some(clamp_ms(self.last_now.load(Ordering::Relaxed))),
        };
        let rows = self.with(|c| c.query(SQL_NEXT_WAKEUP, &[&now]))?;
        match rows.first() {
            None => Ok(None),
            Some(row) => row
                .try_get::<_, Option<i64>>(0)?
                .map(|ms| to_u64(ms, "jobs.available_at"))
                .transpose(),
        }
    }

    fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        for job in self.all_jobs() {
            let job = job?;
            report.jobs += 1;
            let id = &job.id;
            let running = job.state == JobState::Processing;
            let waiting = matches!(job.state, JobState::Pending | JobState::Failed);
            if running != job.locked_by.is_some() || running != job.locked_at.is_some() {
                report.problems.push(format!(
                    "{} job {id} has a lock that does not match its state",
                    job.state
                ));
            }
            if waiting != job.available_at.is_some() && job.state != JobState::Processing {
                report.problems.push(format!(
                    "{} job {id} has a run time that does not match its state",
                    job.state
                ));
            }
        }
        let orphans: i64 = self.with(|c| {
            let rows = c.query(
                "SELECT count(*) FROM jobs WHERE state = 'processing' AND owner IS NULL",
                &[],
            )?;
            Ok(rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
        })?;
        if orphans > 0 {
            report
                .problems
                .push(format!("{orphans} processing jobs have no owner"));
        }
        Ok(report)
    }
    fn cancel(&self, id: &str, now: Millis) -> Result<Job, StoreError> {
        let now = self.now(now);
        let rows = self.with(|c| c.query(SQL_CANCEL, &[&id, &now, &crate::store::CANCELLED]))?;
        if let Some(row) = rows.first() {
            return job_from_row(row);
        }
        match self.get(id)? {
            None => Err(StoreError::NotFound(id.to_string())),
            Some(job) if job.state == JobState::Processing => {
                Err(StoreError::Running(id.to_string()))
            }
            Some(job) => Err(StoreError::Finished {
                id: id.to_string(),
                state: job.state,
            }),
        }
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let cutoff = i64::try_from(finished_before).map_or(MAX_MS, |ms| ms.min(MAX_MS));
        let (examined, last, removed) = self.with(|c| {
            let purge = c.statement(SQL_PURGE)?;
            let row = c
                .client
                .query_one(&purge, &[&state.as_str(), &after, &limit, &cutoff])?;
            Ok((
                row.get::<_, i64>(0),
                row.get::<_, Option<String>>(1),
                row.get::<_, i64>(2),
            ))
        })?;
        Ok(PurgeStep {
            removed: removed.unsigned_abs(),
            next: if examined == limit { last } else { None },
        })
    }

    fn remove(&self, id: &str) -> Result<Job, StoreError> {
        let removed = self.with(|c| {
            let remove = c.statement(SQL_REMOVE)?;
            let output = c.statement(SQL_REMOVE_OUTPUT)?;
            let mut tx = c.client.transaction()?;
            let rows = tx.query(&remove, &[&id])?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let job = job_from_row(row)?;
            tx.execute(&output, &[&id])?;
            tx.commit()?;
            Ok(Some(job))
        })?;
        if let Some(job) = removed {
            return Ok(job);
        }
        match self.get(id)? {
            None => Err(StoreError::NotFound(id.to_string())),
            Some(job) => Err(StoreError::NotFinished {
                id: id.to_string(),
                state: job.state,
            }),
        }
    }
}

/// Reads every job, page by page, in state then id order.
/// Where a page in run order ends: the last job's phase (0: due, 1: waiting) and sort key.
struct RunCursor {
    phase: u8,
    priority: i64,
    available_at: i64,
    seq: i64,
}

impl RunCursor {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(25);
        v.push(self.phase);
        v.extend_from_slice(&self.priority.to_be_bytes());
        v.extend_from_slice(&self.available_at.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<RunCursor> {
        let (&phase, rest) = b.split_first()?;
        if phase > 1 || rest.len() != 24 {
            return None;
        }
        let int = |i: usize| rest[i..i + 8].try_into().ok().map(i64::from_be_bytes);
        Some(RunCursor {
            phase,
            priority: int(0)?,
            available_at: int(8)?,
            seq: int(16)?,
        })
    }
}

struct AllJobs<'a> {
    store: &'a PgStore,
    page: std::vec::IntoIter<Job>,
    after: Option<(JobState, String)>,
    done: bool,
}

impl Iterator for AllJobs<'_> {
    type Item = Result<Job, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(job) = self.page.next() {
            self.after = Some((job.state, job.id.clone()));
            return Some(Ok(job));
        }
        if self.done {
            return None;
        }
        let rows = self.store.with(|c| match &self.after {
            None => c.query(SQL_PAGE_FIRST, &[&PAGE]),
            Some((st, id)) => c.query(SQL_PAGE_AFTER, &[&st.as_str(), id, &PAGE]),
        });
        let jobs = match rows.and_then(|rows| rows.iter().map(job_from_row).collect()) {
            Ok(jobs) => jobs,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        let jobs: Vec<Job> = jobs;
        if (jobs.len() as i64) < PAGE {
            self.done = true;
        }
        self.page = jobs.into_iter();
        let job = self.page.next()?;
        self.after = Some((job.state, job.id.clone()));
        Some(Ok(job))
    }
}

/// Brings the schema to [`schema::VERSION`], in one transaction under an advisory lock.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&schema::MIGRATION_LOCK],
    )?;
    tx.batch_execute(schema::VERSION_TABLE_SQL)?;
    let found: Option<i32> = tx
        .query_opt("SELECT max(version) FROM queuectl_schema", &[])?
        .and_then(|r| r.get(0));
    let found = found.unwrap_or(0);
    if found > schema::VERSION {
        return Err(StoreError::Schema {
            found: u32::try_from(found).unwrap_or(0),
            expected: schema::VERSION as u32,
        });
    }
    if found == schema::VERSION {
        return Ok(());
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!(version = i + 1, "upgrading the PostgreSQL schema");
        tx.batch_execute(sql)?;
    }
    tx.execute("DELETE FROM queuectl_schema", &[])?;
    tx.execute(
        "INSERT INTO queuectl_schema (version) VALUES ($1)",
        &[&schema::VERSION],
    )?;
    tx.commit()?;
    Ok(())
}

/// The error for the first of `ids` (in their order) that a job already has: `Duplicate`, or
/// `DuplicateInBatch` when it is staged in `batch` itself.
fn first_existing(
    tx: &mut postgres::Transaction<'_>,
    existing: &Statement,
    ids: &[&str],
    batch: Option<&str>,
) -> Result<Option<StoreError>, StoreError> {
    let rows = tx.query(existing, &[&ids, &batch])?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut found: HashMap<String, bool> = HashMap::with_capacity(rows.len());
    for r in &rows {
        found.insert(r.try_get(0)?, r.try_get(1)?);
    }
    Ok(ids.iter().find_map(|id| {
        found.get(*id).map(|same_batch| {
            if *same_batch {
                StoreError::DuplicateInBatch(id.to_string())
            } else {
                StoreError::Duplicate(id.to_string())
            }
        })
    }))
}

/// Whether `e` says the connection is gone (closed, shut down by the server, or broken).
fn connection_lost(e: &StoreError) -> bool {
    let StoreError::Backend(b) = e else {
        return false;
    };
    let Some(PgError(e)) = b.downcast_ref::<PgError>() else {
        return false;
    };
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Class 08 (connection exception), and the server ending the session (57P01-57P03).
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
        }
        // No SQL state: the socket failed (an error of ours, such as a value that does not
        // convert, would not close the connection, which the caller checks first).
        None => std::error::Error::source(e)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()),
    }
}

fn is_unique_violation(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<PgError>()
        .map(|PgError(e)| e)
        .and_then(|e| e.code())
        .is_some_and(|c| *c == SqlState::UNIQUE_VIOLATION)
}

/// The parameters describing how an attempt ended: mode, error, backoff base.
fn end_params<'a>(end: &RunEnd<'a>) -> (&'static str, Option<&'a str>, i64) {
    match *end {
        RunEnd::Succeeded => ("ok", None, 0),
        RunEnd::Failed {
            error,
            backoff_base,
        } => ("fail", Some(error), clamp_ms(backoff_base)),
        RunEnd::Cancelled => ("cancel", Some(crate::store::CANCELLED), 0),
    }
}

fn clamp_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(MAX_MS).min(MAX_MS)
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        tree: "jobs",
        detail: format!("{what} is negative ({v})"),
    })
}

fn to_u32(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        tree: "jobs",
        detail: format!("{what} is out of range ({v})"),
    })
}

fn parse_state(s: &str) -> Result<JobState, StoreError> {
    s.parse().map_err(|_| StoreError::Corrupt {
        tree: "jobs",
        detail: format!("unknown state {s}"),
    })
}

fn opt_ms(row: &Row, col: &str) -> Result<Option<Millis>, StoreError> {
    row.try_get::<_, Option<i64>>(col)?
        .map(|v| to_u64(v, col))
        .transpose()
}

/// A job from a row holding [`job_cols`].
fn job_from_row(row: &Row) -> Result<Job, StoreError> {
    let env: String = row.try_get("env")?;
    let env: Vec<(String, String)> =
        serde_json::from_str(&env).map_err(|e| StoreError::Corrupt {
            tree: "jobs",
            detail: format!("env: {e}"),
        })?;
    let state: String = row.try_get("state")?;
    Ok(Job {
        id: row.try_get("id")?,
        command: row.try_get("command")?,
        state: parse_state(&state)?,
        attempts: to_u32(row.try_get("attempts")?, "attempts")?,
        max_retries: to_u32(row.try_get("max_retries")?, "max_retries")?,
        created_at: to_u64(row.try_get("created_ms")?, "created_at")?,
        updated_at: to_u64(row.try_get("updated_ms")?, "updated_at")?,
        available_at: opt_ms(row, "available_ms")?,
        locked_by: row.try_get("locked_by")?,
        locked_at: opt_ms(row, "locked_ms")?,
        last_error: row.try_get("last_error")?,
        priority: row.try_get("priority")?,
        timeout_ms: row
            .try_get::<_, Option<i64>>("timeout_ms")?
            .map(|v| to_u64(v, "timeout_ms"))
            .transpose()?,
        seq: to_u64(row.try_get("seq")?, "seq")?,
        pgid: row.try_get("pgid")?,
        runs: to_u32(row.try_get("runs")?, "runs")?,
        cwd: row.try_get("cwd")?,
        env,
    })
}

/// `url` without credentials, for a message about a URL that did not parse.
fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_user, rest)) => match scheme_user.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://{rest}"),
            None => rest.to_string(),
        },
        None => url.to_string(),
    }
}

/// Where `config` points, without credentials: `postgres://host:port/db`.
fn describe(config: &postgres::Config) -> String {
    use postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgres://{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}
