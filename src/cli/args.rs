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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add a job: '{"command":"echo hi"}' (fields: command, id, max_retries, priority, run_at,
    /// delay, timeout), or many from a JSON Lines file with --file
    Enqueue(EnqueueArgs),
    /// Start or stop the supervisor and its worker processes
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Show how many jobs are in each state, and the workers
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// List jobs, by state
    List(ListArgs),
    /// Show one job
    Show {
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the captured output (last 64 KiB of stdout and stderr) of a job's latest attempt
    Logs {
        id: String,
        /// Which attempt (1 = the first run)
        #[arg(long, value_name = "K")]
        attempt: Option<u32>,
    },
    /// The dead letter queue: jobs that failed max_retries times
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Show or change settings (max_retries, backoff_base, poll_interval_ms)
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write every job and the config to an SQLite file (the seed's jobs and config tables)
    Export {
        /// Path of the SQLite file to write
        #[arg(long, value_name = "PATH")]
        sqlite: PathBuf,
        /// Replace PATH if it exists
        #[arg(long)]
        force: bool,
    },
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
    pub json: Option<String>,
    /// Read jobs from a JSON Lines file (one job per line; - for stdin), all or none
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// pending, processing, completed, failed or dead [default: all]
    #[arg(long)]
    pub state: Option<String>,
    /// At most this many jobs
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Skip this many jobs first
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: usize,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
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
        /// (internal) report readiness on stdout, used when detaching
        #[arg(long, hide = true)]
        notify_ready: bool,
    },
    /// Stop the supervisor: running jobs finish first (or are killed and requeued with --force)
    Stop {
        /// Seconds to wait for it to exit
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Kill running jobs and return them to pending
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead jobs
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Move a dead job back to pending with attempts = 0
    Retry { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show every setting
    Show {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
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
