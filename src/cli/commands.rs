//! One function per command: turn the parsed arguments into a [`Request`] (validating them
//! first), send it with [`client::call`], and print the reply for a person (tables) or a
//! program (`--json`). Nothing here touches the store or the spool directly.

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::time::Duration;

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, CellAlignment, Table};

use crate::cli::client::{self, ClientError};
use crate::cli::{Cli, Command, ConfigCommand, DlqCommand, EnqueueArgs, ListArgs, WorkerCommand};
use crate::datadir::{DataDir, DataDirError};
use crate::export::{self, ExportError};
use crate::model::{format_ts, now_ms, ConfigKey, Job, JobState, JobView, NewJob};
use crate::owner::OwnerError;
use crate::spool::request::{ErrorKind, Reply, Request, StatusInfo};
use crate::supervisor::{self, SupervisorError};

/// Default wait for a running supervisor's reply; `QUEUECTL_REPLY_TIMEOUT` (seconds) overrides.
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the commands, each with its exit status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The user's input was refused; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The owner of the store reported a failure.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
    #[error("the supervisor answered with something unexpected")]
    Unexpected,
}

impl CommandError {
    /// 2 for invalid input, 3 for a request queued but not yet confirmed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Invalid(_) => 2,
            CommandError::Client(ClientError::Queued { .. }) => 3,
            CommandError::Export(ExportError::Exists { .. } | ExportError::NotRegular { .. }) => 2,
            CommandError::DataDir(e) if e.is_refusal() => 2,
            CommandError::Client(ClientError::Owner(OwnerError::DataDir(e))) if e.is_refusal() => 2,
            CommandError::Supervisor(e) if e.is_user_error() => 2,
            _ => 1,
        }
    }

    /// Writing to a closed pipe (`queuectl list | head`) is not an error.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CommandError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

type Result<T, E = CommandError> = std::result::Result<T, E>;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let root = DataDir::resolve(cli.data_dir.as_deref())?;
    let dir = DataDir::open(&root)?;
    let out = &mut io::stdout().lock();
    match cli.command {
        Command::Enqueue(args) => enqueue(&dir, args, out),
        Command::Worker(WorkerCommand::Start {
            count,
            foreground,
            notify_ready,
        }) => {
            let msg = supervisor::start(&dir, count, foreground, notify_ready)?;
            if let Some(msg) = msg {
                writeln!(out, "{msg}")?;
            }
            Ok(())
        }
        Command::Worker(WorkerCommand::Stop { timeout, force }) => {
            let msg = supervisor::stop(&dir, Duration::from_secs(timeout), force)?;
            writeln!(out, "{msg}")?;
            Ok(())
        }
        Command::Status { json } => status(&dir, json, out),
        Command::List(args) => list(&dir, args, out),
        Command::Show { id, json } => show(&dir, id, json, out),
        Command::Logs { id, attempt } => logs(&dir, id, attempt, out),
        Command::Dlq(DlqCommand::List { json }) => list(
            &dir,
            ListArgs {
                state: Some("dead".into()),
                limit: None,
                offset: 0,
                json,
            },
            out,
        ),
        Command::Dlq(DlqCommand::Retry { id }) => match call(&dir, &Request::DlqRetry { id })? {
            Reply::Retried(job) => {
                writeln!(out, "Job {} moved from the DLQ to pending", job.id)?;
                Ok(())
            }
            other => unexpected(other),
        },
        Command::Config(c) => config(&dir, c, out),
        Command::Export { sqlite, force } => export(&dir, &sqlite, force, out),
        Command::WorkerChild => supervisor::worker_child(&dir).map_err(Into::into),
    }
}

fn reply_timeout() -> Duration {
    std::env::var("QUEUECTL_REPLY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_REPLY_TIMEOUT)
}

/// Sends a request; an error reply becomes the matching error.
fn call(dir: &DataDir, req: &Request) -> Result<Reply> {
    match client::call(dir, req, reply_timeout())? {
        Reply::Error {
            kind: ErrorKind::Invalid,
            message,
        } => Err(CommandError::Invalid(message)),
        Reply::Error {
            kind: ErrorKind::Internal,
            message,
        } => Err(CommandError::Failed(message)),
        reply => Ok(reply),
    }
}

fn unexpected<T>(reply: Reply) -> Result<T> {
    tracing::debug!("unexpected reply: {reply:?}");
    Err(CommandError::Unexpected)
}

fn enqueue(dir: &DataDir, args: EnqueueArgs, out: &mut impl Write) -> Result<()> {
    let now = now_ms();
    let invalid = |e: crate::model::ModelError| CommandError::Invalid(e.to_string());
    let jobs = match (&args.json, &args.file) {
        (Some(text), None) => vec![NewJob::from_json(text, now).map_err(invalid)?],
        (None, Some(path)) => read_jobs_file(path, now)?,
        _ => {
            return Err(CommandError::Invalid(
                "give a job as JSON or --file PATH".into(),
            ))
        }
    };
    let n = jobs.len();
    let single = args.json.is_some().then(|| jobs[0].id.clone());
    match call(dir, &Request::Enqueue { jobs })? {
        Reply::Done => {
            match single {
                Some(id) => writeln!(out, "{id}")?,
                None => writeln!(out, "Enqueued {n} job{}", if n == 1 { "" } else { "s" })?,
            }
            Ok(())
        }
        other => unexpected(other),
    }
}

/// Reads JSON Lines (blank lines skipped); the first bad line refuses the whole file.
fn read_jobs_file(path: &Path, now: u64) -> Result<Vec<NewJob>> {
    let cannot =
        |e: io::Error| CommandError::Invalid(format!("cannot read {}: {e}", path.display()));
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(io::BufReader::new(io::stdin()))
    } else {
        let file = std::fs::File::open(path).map_err(cannot)?;
        if file.metadata().map_err(cannot)?.is_dir() {
            return Err(CommandError::Invalid(format!(
                "{} is a directory",
                path.display()
            )));
        }
        Box::new(io::BufReader::with_capacity(1 << 20, file))
    };
    let mut jobs = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(cannot)?;
        if line.trim().is_empty() {
            continue;
        }
        let job = NewJob::from_json(&line, now).map_err(|e| {
            CommandError::Invalid(format!("{}: line {}: {e}", path.display(), i + 1))
        })?;
        jobs.push(job);
    }
    Ok(jobs)
}

fn status(dir: &DataDir, json: bool, out: &mut impl Write) -> Result<()> {
    let Reply::Status(s) = call(dir, &Request::Status)? else {
        return Err(CommandError::Unexpected);
    };
    if json {
        writeln!(out, "{}", status_json(&s))?;
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(["STATE", "JOBS"]);
    for st in JobState::ALL {
        t.add_row([
            Cell::new(st),
            Cell::new(s.counts.get(st)).set_alignment(CellAlignment::Right),
        ]);
    }
    t.add_row([
        Cell::new("total"),
        Cell::new(s.counts.total()).set_alignment(CellAlignment::Right),
    ]);
    writeln!(out, "{t}")?;
    match s.owner.supervisor_pid {
        Some(pid) => writeln!(
            out,
            "Workers: {} ({} busy), supervisor pid {pid}",
            s.owner.workers, s.owner.busy_workers
        )?,
        None => writeln!(out, "Workers: 0 (no supervisor running)")?,
    }
    Ok(())
}

fn status_json(s: &StatusInfo) -> serde_json::Value {
    serde_json::json!({
        "pending": s.counts.pending,
        "processing": s.counts.processing,
        "completed": s.counts.completed,
        "failed": s.counts.failed,
        "dead": s.counts.dead,
        "total": s.counts.total(),
        "workers": s.owner.workers,
        "busy_workers": s.owner.busy_workers,
        "supervisor_pid": s.owner.supervisor_pid,
    })
}

fn list(dir: &DataDir, args: ListArgs, out: &mut impl Write) -> Result<()> {
    let state = match &args.state {
        None => None,
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| CommandError::Invalid(e.to_string()))?,
        ),
    };
    let req = Request::List {
        state,
        offset: args.offset,
        limit: args.limit.unwrap_or(usize::MAX),
    };
    let Reply::Jobs(jobs) = call(dir, &req)? else {
        return Err(CommandError::Unexpected);
    };
    if args.json {
        let views: Vec<JobView> = jobs.iter().map(JobView::from).collect();
        writeln!(out, "{}", to_json(&views))?;
        return Ok(());
    }
    if jobs.is_empty() {
        match state {
            Some(st) => writeln!(out, "No {st} jobs.")?,
            None => writeln!(out, "No jobs.")?,
        }
        return Ok(());
    }
    writeln!(out, "{}", jobs_table(&jobs))?;
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn jobs_table(jobs: &[Job]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header([
        "ID",
        "STATE",
        "ATTEMPTS",
        "PRIORITY",
        "COMMAND",
        "UPDATED",
        "NEXT RUN",
        "LAST ERROR",
    ]);
    for j in jobs {
        t.add_row([
            j.id.clone(),
            j.state.to_string(),
            format!("{}/{}", j.attempts, j.max_retries),
            j.priority.to_string(),
            shorten(&j.command, 40),
            format_ts(j.updated_at),
            j.available_at.map(format_ts).unwrap_or_else(|| "-".into()),
            j.last_error
                .as_deref()
                .map(|e| shorten(e, 50))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

/// One line of at most `max` characters.
fn shorten(s: &str, max: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn show(dir: &DataDir, id: String, json: bool, out: &mut impl Write) -> Result<()> {
    let Reply::Job(job) = call(dir, &Request::Show { id })? else {
        return Err(CommandError::Unexpected);
    };
    let view = JobView::from(&job);
    if json {
        writeln!(out, "{}", to_json(&view))?;
        return Ok(());
    }
    let value = serde_json::to_value(&view).unwrap_or_default();
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            let v = match v {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            writeln!(out, "{k:<13} {v}")?;
        }
    }
    Ok(())
}

fn logs(dir: &DataDir, id: String, run: Option<u32>, out: &mut impl Write) -> Result<()> {
    let Reply::Logs { job, run, output } = call(dir, &Request::Logs { id, run })? else {
        return Err(CommandError::Unexpected);
    };
    match output {
        None if job.state == JobState::Processing && run == job.runs => {
            writeln!(out, "(attempt {run} of job {} is still running)", job.id)?
        }
        None => writeln!(out, "(attempt {run} of job {} left no output)", job.id)?,
        Some(o) => {
            writeln!(
                out,
                "=== job {} attempt {run}/{}: {} in {:.2}s, finished {} ===",
                job.id,
                job.runs,
                o.outcome.describe(),
                o.duration_ms as f64 / 1000.0,
                format_ts(o.finished_at)
            )?;
            writeln!(out, "--- stdout ---")?;
            out.write_all(&o.stdout)?;
            if !o.stdout.is_empty() && !o.stdout.ends_with(b"\n") {
                writeln!(out)?;
            }
            writeln!(out, "--- stderr ---")?;
            out.write_all(&o.stderr)?;
            if !o.stderr.is_empty() && !o.stderr.ends_with(b"\n") {
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

fn config(dir: &DataDir, c: ConfigCommand, out: &mut impl Write) -> Result<()> {
    let parse_key = |k: &str| {
        k.parse::<ConfigKey>()
            .map_err(|e| CommandError::Invalid(e.to_string()))
    };
    match c {
        ConfigCommand::Set { key, value } => {
            let k = parse_key(&key)?;
            let v = k
                .parse_value(&value)
                .map_err(|e| CommandError::Invalid(e.to_string()))?;
            match call(
                dir,
                &Request::ConfigSet {
                    key: key.clone(),
                    value: v,
                },
            )? {
                Reply::Done => writeln!(out, "{key} = {v}")?,
                other => return unexpected(other),
            }
        }
        ConfigCommand::Get { key } => {
            let k = parse_key(&key)?;
            let Reply::Config(cfg) = call(dir, &Request::Config)? else {
                return Err(CommandError::Unexpected);
            };
            writeln!(out, "{}", cfg.get(k))?;
        }
        ConfigCommand::Show { json } => {
            let Reply::Config(cfg) = call(dir, &Request::Config)? else {
                return Err(CommandError::Unexpected);
            };
            if json {
                let map: serde_json::Map<String, serde_json::Value> = cfg
                    .entries()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
                writeln!(out, "{}", to_json(&map))?;
            } else {
                let mut t = Table::new();
                t.load_preset(NOTHING).set_header(["KEY", "VALUE"]);
                for (k, v) in cfg.entries() {
                    t.add_row([k.to_string(), v.to_string()]);
                }
                writeln!(out, "{t}")?;
            }
        }
    }
    Ok(())
}

fn export(dir: &DataDir, path: &Path, force: bool, out: &mut impl Write) -> Result<()> {
    // A directory is refused by the export itself: "use --force" would be wrong advice.
    if !force && path.exists() && !path.is_dir() {
        return Err(ExportError::Exists {
            path: path.to_path_buf(),
        }
        .into());
    }
    let Reply::Dump { jobs, config } = call(dir, &Request::Dump)? else {
        return Err(CommandError::Unexpected);
    };
    let summary = export::export_sqlite(path, force, jobs, &config)?;
    writeln!(
        out,
        "Exported {} jobs and {} config keys to {}",
        summary.jobs,
        summary.config_keys,
        path.display()
    )?;
    Ok(())
}
