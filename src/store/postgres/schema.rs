//! The PostgreSQL schema queuectl creates and upgrades: one migration per version, applied in
//! order under an advisory lock, with the version kept in `queuectl_schema`.
//!
//! The `jobs` table starts with the columns of the Node.js queuectl's documented table, in its
//! order, then queuectl's own. Times are `timestamptz` with millisecond precision; ids sort
//! bytewise (`COLLATE "C"`), as on the embedded store.

/// The newest schema version this queuectl knows.
pub const VERSION: i32 = 3;

/// Serialises schema changes between processes opening the same database at once
/// (`pg_advisory_xact_lock` key; arbitrary, fixed).
pub const MIGRATION_LOCK: i64 = 0x7175_6575_6563_746c; // "queuectl"

/// The table holding the schema version (one row).
pub const VERSION_TABLE_SQL: &str =
    "CREATE TABLE IF NOT EXISTS queuectl_schema (version integer NOT NULL)";

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: [&str; VERSION as usize] = [V1, V2, V3];

const V1: &str = r#"
-- `staged`: enqueued in a batch not yet published (invisible to every read and to reservation).
CREATE TYPE queuectl_state AS ENUM ('pending', 'processing', 'completed', 'failed', 'dead',
    'staged');

CREATE TABLE jobs (
    id text COLLATE "C" PRIMARY KEY,
    command text NOT NULL,
    state queuectl_state NOT NULL,
    attempts bigint NOT NULL DEFAULT 0,
    max_retries bigint NOT NULL DEFAULT 3,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    available_at timestamptz,
    locked_by text,
    locked_at timestamptz,
    last_error text,
    priority bigint NOT NULL DEFAULT 0,
    -- queuectl's own columns
    timeout_ms bigint,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    pgid integer,
    runs bigint NOT NULL DEFAULT 0,
    cwd text,
    env jsonb NOT NULL DEFAULT '[]',
    -- the supervisor (host) running the job, and until when its lease holds
    owner text,
    lease_until timestamptz,
    -- the bulk enqueue a staged job belongs to
    batch text
);

-- Reservation walks this index in order: highest priority, earliest, first enqueued.
CREATE INDEX jobs_ready ON jobs (priority DESC, available_at, seq)
    WHERE state IN ('pending', 'failed');
-- The next time a waiting job becomes due.
CREATE INDEX jobs_waiting ON jobs (available_at) WHERE state IN ('pending', 'failed');
-- Listing a state in id order, and counting states.
CREATE INDEX jobs_state ON jobs (state, id);
-- Publishing or dropping a staged batch.
CREATE INDEX jobs_staged ON jobs (batch) WHERE state = 'staged';
-- Reaping expired leases, and a supervisor finding its own jobs.
CREATE INDEX jobs_running ON jobs (owner, lease_until) WHERE state = 'processing';

CREATE TABLE config (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE job_output (
    job_id text COLLATE "C" NOT NULL,
    run bigint NOT NULL,
    outcome jsonb NOT NULL,
    finished_at timestamptz NOT NULL,
    duration_ms bigint NOT NULL,
    stdout bytea NOT NULL,
    stderr bytea NOT NULL,
    PRIMARY KEY (job_id, run)
);

CREATE TABLE queuectl_applied (
    request text PRIMARY KEY
);
"#;

/// The supervisors sharing the queue, one row per data directory, with their heartbeat.
const V2: &str = r#"
CREATE TABLE queuectl_supervisors (
    owner text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    workers integer NOT NULL,
    busy integer NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
"#;

/// A cancel asked for a job while it runs on some host: that host's supervisor stops it (told at
/// once by a notification, or at its next lease renewal if it missed that).
const V3: &str = r#"
ALTER TABLE jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
"#;
