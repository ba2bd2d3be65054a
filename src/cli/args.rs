//! The command line: every command and argument, declared with clap's derive. The doc
//! comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A durable background job queue for shell commands: run them in parallel, retry with
/// exponential backoff, keep the ones that never succeed in a dead letter queue.
#[derive(Debug, Parser)]
#[command(name = "queuectl", version, about)]
pub struct Cli {
    /// Directory holding the queue [default: $QUEUECTL_HOME, else ~/.local/share/queuectl]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,

    /// Keep the queue in this PostgreSQL database, shared by every host pointed at it
    /// (postgres://user:password@host:port/database)
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "QUEUECTL_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add a job given as JSON: '{"command":"echo hi"}' (fields: command, id, max_retries,
    /// priority, run_at, delay, timeout, cwd, env), or many from a JSON Lines file with --file
    Enqueue(EnqueueArgs),
    /// Add a job from its command line: queuectl add -- make test
    Add(AddArgs),
    /// Stop jobs that have not finished: they move to the dead letter queue as "cancelled"
    Cancel {
        /// Ids of the jobs
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Wait until jobs are completed or dead: exit 0 if all completed, 1 if any is dead, 124 on
    /// timeout
    Wait {
        /// Ids of the jobs
        #[arg(
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Vec<String>,
        /// Every job not yet finished when the wait begins
        #[arg(long)]
        all: bool,
        /// Give up after this long: 30 (seconds), 90s, 5m, 2h
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
    /// Delete finished (completed or dead) jobs and their output
    Rm {
        /// Ids of the jobs
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Start, stop, resize or pause the supervisor and its worker processes
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Show how many jobs are in each state, the workers and the data directory
    Status,
    /// List jobs, by state
    List(ListArgs),
    /// Show one job
    Show { id: String },
    /// Print the captured output (last 64 KiB of stdout and stderr) of a job's latest run;
    /// of a running one, what it printed so far
    Logs {
        /// The job (not with --supervisor)
        #[arg(required_unless_present = "supervisor", conflicts_with = "supervisor")]
        id: Option<String>,
        /// Which run (1 = the first)
        #[arg(long, value_name = "N", visible_alias = "attempt")]
        run: Option<u32>,
        /// Keep printing a running job's output as it is written, until the run ends (with
        /// --supervisor: the log, until interrupted)
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print the supervisor's log (worker.log) instead
        #[arg(long)]
        supervisor: bool,
    },
    /// The dead letter queue: jobs that failed max_retries times, or were cancelled
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Show or change settings (max_retries, backoff_base, poll_interval_ms)
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Remove completed or dead jobs (and their output) that finished long enough ago
    Clean {
        /// completed or dead
        #[arg(long)]
        state: String,
        /// Remove those finished longer ago than this (90s, 12h, 7d) [default: the retention
        /// setting for the state (retention_completed, retention_dead), or all when it is keep]
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
    },
    /// Write every job and the config to an SQLite file (the jobs and config tables of the
    /// Node.js queuectl)
    Export {
        /// Path of the SQLite file to write
        #[arg(long, value_name = "PATH")]
        sqlite: PathBuf,
        /// Replace PATH if it exists
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script: queuectl completions bash > ~/.local/share/bash-completion/completions/queuectl
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): queuectl man | man -l -
    Man,
    /// A worker child process (started by the supervisor; not for direct use)
    #[command(hide = true, name = "worker-child")]
    WorkerChild,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The job as JSON
    #[arg(
        value_name = "JSON",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub job: Option<String>,
    /// Read jobs from a JSON Lines file (one job per line; - for stdin), all or none, in
    /// bounded memory whatever its size
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Job id [default: a new ULID]
    #[arg(long)]
    pub id: Option<String>,
    /// Higher runs first
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<String>,
    /// Run no earlier than this long from now: 30 (seconds), 90s, 5m, 2h, 1d
    #[arg(long, value_name = "DURATION", conflicts_with = "at")]
    pub delay: Option<String>,
    /// Run no earlier than this time (RFC 3339, any offset: 2026-12-01T06:00:00+01:00)
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Kill the run's process group after this long: 30 (seconds), 90s, 5m, 2h
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Failed runs allowed before the job moves to the dead letter queue [default: from config]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_retries: Option<String>,
    /// Add a variable to the job's environment (repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run in this directory [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// The command and its arguments, each quoted for the shell
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// pending, processing, completed, failed or dead, or several: failed,dead [default: all]
    #[arg(long)]
    pub state: Option<String>,
    /// At most this many jobs [default: 50 when printing a table to a terminal, else all]
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub limit: Option<usize>,
    /// Order: id (ids queuectl makes sort by the time they were added, so oldest first; ids
    /// you chose sort by their bytes) or next-run (only the jobs waiting to run, pending and
    /// failed, in the order the queue would start them: those due now by highest priority,
    /// then earliest; then those waiting for a later time, earliest first)
    #[arg(long, value_name = "ORDER", default_value = "id")]
    pub sort: String,
    /// Every job, also on a terminal
    #[arg(long)]
    pub all: bool,
    /// Skip this many jobs first
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: usize,
}

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// Start the supervisor with N worker processes (detached unless --foreground)
    Start {
        /// Number of worker processes
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
        count: u32,
        /// Stay attached to the terminal and log to it too
        #[arg(long)]
        foreground: bool,
        /// Report readiness on stdout (used when detaching)
        #[arg(long, hide = true)]
        notify_ready: bool,
    },
    /// Change the number of workers of the running supervisor (fewer: idle workers leave
    /// first, busy ones once their job is finished)
    Scale {
        /// Number of worker processes
        #[arg(value_parser = clap::value_parser!(u32).range(1..=1024))]
        count: u32,
    },
    /// Start no new job until `worker resume` (running jobs go on; nothing is killed)
    Pause,
    /// Start jobs again after `worker pause`
    Resume,
    /// Stop the supervisor: running jobs finish first (or are killed and requeued with --force)
    Stop {
        /// How long to wait for it to exit: 60 (seconds), 90s, 5m
        #[arg(long, value_name = "DURATION", default_value = "60")]
        timeout: String,
        /// Kill running jobs and return them to pending
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead jobs
    List,
    /// Move dead jobs back to pending with their failures reset to 0
    Retry {
        /// Ids of the jobs
        #[arg(
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ids: Vec<String>,
        /// Every dead job
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show every setting
    Show,
    /// Print one setting
    Get { key: String },
    /// Change one setting (a running supervisor uses it at once)
    Set {
        key: String,
        // A negative number is a value to refuse with a reason, not an unknown flag.
        #[arg(allow_negative_numbers = true)]
        value: String,
    },
}
