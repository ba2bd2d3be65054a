//! One function per command: turn the parsed arguments into a [`Request`] (validating them
//! first), send it with [`client::call`], and print the reply for a person (tables) or a
//! program (`--json`). Nothing here touches the store directly, nor the spool except to write
//! the jobs file of a bulk enqueue.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use comfy_table::presets::NOTHING;
use comfy_table::{Cell, CellAlignment, ColumnConstraint, ContentArrangement, Table, Width};

use crate::cli::client::{self, ClientError};
use crate::cli::{
    AddArgs, Cli, Command, ConfigCommand, DlqCommand, EnqueueArgs, ListArgs, WorkerCommand,
};
use crate::datadir::{DataDir, DataDirError, Holder};
use crate::export::{self, ExportError};
use crate::model::{
    escape_control, format_duration, format_ts, now_ms, parse_duration, ConfigKey, Job, JobSpec,
    JobState, JobView, NewJob, Outcome,
};
use crate::owner::OwnerError;
use crate::spool::request::{self, ErrorKind, Reply, Request, StatusInfo};
use crate::spool::Spool;
use crate::store::ListOrder;
use crate::supervisor::{self, SupervisorError};
use crate::worker::{self, WorkerError};

/// Default wait for a running supervisor's reply; `QUEUECTL_REPLY_TIMEOUT` (seconds) overrides.
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest wait a command accepts (about 31 years); larger values mean the same.
const MAX_WAIT_SECS: u64 = 1 << 30;

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
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
    #[error("the supervisor answered with something unexpected")]
    Unexpected,
    /// `wait`: some of the jobs ended dead.
    #[error("{dead} of {total} job{} ended dead", if *total == 1 { "" } else { "s" })]
    Dead { dead: usize, total: usize },
    /// `wait`: the time given ran out.
    #[error("gave up waiting after {0}: {1} job(s) not finished")]
    WaitTimeout(String, usize),
    /// Some of the jobs of a command about several could not be changed (each said why).
    #[error("{failed} of {total} job{} could not be changed", if *total == 1 { "" } else { "s" })]
    Some { failed: usize, total: usize },
}

impl CommandError {
    /// 2 for invalid input, 3 for a request queued but not yet confirmed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Invalid(_) => 2,
            CommandError::WaitTimeout(..) => 124,
            CommandError::Client(ClientError::Queued { .. } | ClientError::QueuedBusy { .. }) => 3,
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
    let out = &mut io::stdout().lock();
    let json = cli.json;
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "queuectl", out);
            return Ok(());
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(out)?;
            return Ok(());
        }
        _ => {}
    }
    let root = DataDir::resolve(cli.data_dir.as_deref())?;
    let dir = if creates_data_dir(&cli.command) {
        DataDir::open(&root)?
    } else {
        DataDir::open_existing(&root)?
    };
    if let Some(url) = &cli.database_url {
        // The supervisor and its workers are started from this process: they inherit the
        // choice through the environment (not the command line, where others could read a
        // password).
        std::env::set_var("QUEUECTL_DATABASE_URL", url);
    }
    let dir = dir.with_database_url(cli.database_url.clone());
    match cli.command {
        Command::Enqueue(args) => enqueue(&dir, args, json, out),
        Command::Add(args) => add(&dir, args, json, out),
        Command::Cancel { ids } => cancel(&dir, ids, json, out),
        Command::Wait { ids, all, timeout } => wait(&dir, ids, all, timeout, json, out),
        Command::Rm { ids } => each(&dir, Request::Remove { ids }, "removed", json, out),
        Command::Worker(WorkerCommand::Start {
            count,
            foreground,
            notify_ready,
        }) => {
            // Refuse an unsafe store here, with our exit status, not from the detached daemon.
            dir.secure_store()?;
            let msg = supervisor::start(&dir, count, foreground, notify_ready)?;
            if let Some(msg) = msg {
                message(out, json, &msg)?;
            }
            Ok(())
        }
        Command::Worker(WorkerCommand::Stop { timeout, force }) => {
            let ms = parse_duration(&timeout)
                .map_err(|e| CommandError::Invalid(format!("--timeout: {e}")))?;
            // The supervisor adds the timeout to the clock: keep it where that cannot overflow.
            let timeout = Duration::from_millis(ms.min(MAX_WAIT_SECS * 1000));
            let msg = supervisor::stop(&dir, timeout, force)?;
            message(out, json, &msg)
        }
        Command::Worker(WorkerCommand::Scale { count }) => {
            match call(&dir, &Request::Scale { count })? {
                Reply::Done => {
                    let s = if count == 1 { "" } else { "s" };
                    message(out, json, &format!("Scaling to {count} worker{s}"))
                }
                other => unexpected(other),
            }
        }
        Command::Worker(WorkerCommand::Pause) => pause(&dir, true, json, out),
        Command::Worker(WorkerCommand::Resume) => pause(&dir, false, json, out),
        Command::Status => status(&dir, json, out),
        Command::List(args) => list(&dir, args, json, out),
        Command::Show { id } => show(&dir, id, json, out),
        Command::Logs {
            supervisor: true,
            follow,
            ..
        } => supervisor_log(&dir, follow, json, out),
        Command::Logs {
            id: Some(id),
            run,
            follow,
            ..
        } => logs(&dir, id, run, follow, json, out),
        Command::Logs { id: None, .. } => Err(CommandError::Invalid(
            "give a job id, or --supervisor".into(),
        )),
        Command::Dlq(DlqCommand::List) => list(
            &dir,
            ListArgs {
                state: Some("dead".into()),
                limit: None,
                offset: 0,
                all: false,
                sort: "id".into(),
            },
            json,
            out,
        ),
        Command::Dlq(DlqCommand::Retry { ids, all }) => dlq_retry(&dir, ids, all, json, out),
        Command::Config(c) => config(&dir, c, json, out),
        Command::Clean { state, older_than } => clean(&dir, &state, older_than, json, out),
        Command::Export { sqlite, force } => export(&dir, &sqlite, force, json, out),
        Command::WorkerChild => worker::run_child(&dir).map_err(Into::into),
        Command::Completions { .. } | Command::Man => Ok(()),
    }
}

fn pause(dir: &DataDir, paused: bool, json: bool, out: &mut impl Write) -> Result<()> {
    match call(dir, &Request::Pause { paused })? {
        Reply::Done if paused => message(
            out,
            json,
            "Paused: running jobs go on, no new job starts until `queuectl worker resume`",
        ),
        Reply::Done => message(out, json, "Resumed"),
        other => unexpected(other),
    }
}

/// The id of a job enqueued without one: a ULID, so ids sort in creation order.
fn new_job_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// Whether a command may create the data directory: only those that put something in it.
/// Reading commands refuse a directory that does not exist (a mistyped `--data-dir`).
fn creates_data_dir(c: &Command) -> bool {
    matches!(
        c,
        Command::Enqueue(_)
            | Command::Add(_)
            | Command::Worker(WorkerCommand::Start { .. })
            | Command::Config(ConfigCommand::Set { .. })
            | Command::WorkerChild
    )
}

/// A sentence for a person, or `{"message": ...}`.
fn message(out: &mut impl Write, json: bool, msg: &str) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::json!({ "message": msg }))?;
    } else {
        writeln!(out, "{msg}")?;
    }
    Ok(())
}

fn reply_timeout() -> Duration {
    std::env::var("QUEUECTL_REPLY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        // Too large for a Duration (or not a number): no limit worth the name; wait "forever".
        .map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))
        .unwrap_or(DEFAULT_REPLY_TIMEOUT)
}

/// Sends a request; an error reply becomes the matching error.
fn call(dir: &DataDir, req: &Request) -> Result<Reply> {
    error_reply(client::call(dir, req, reply_timeout())?)
}

/// An error reply as the matching error.
fn error_reply(reply: Reply) -> Result<Reply> {
    match reply {
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

fn enqueue(dir: &DataDir, args: EnqueueArgs, json: bool, out: &mut impl Write) -> Result<()> {
    let now = now_ms();
    let invalid = |e: crate::model::ModelError| CommandError::Invalid(e.to_string());
    let job = match (&args.job, &args.file) {
        (Some(text), None) => NewJob::from_json(text, now, new_job_id).map_err(invalid)?,
        (None, Some(path)) => return enqueue_file(dir, path, now, json, out),
        _ => {
            return Err(CommandError::Invalid(
                "give a job as JSON or --file PATH".into(),
            ))
        }
    };
    let mut jobs = vec![job];
    let here = current_dir()?;
    for job in &mut jobs {
        set_cwd(job, &here)?;
    }
    submit(dir, jobs, true, json, out)
}

/// A job runs in the directory given (relative to the caller's), else the caller's.
fn set_cwd(job: &mut NewJob, here: &Path) -> Result<()> {
    let cwd = match job.cwd.take() {
        None => path_text(here)?,
        Some(c) => path_text(&here.join(c))?,
    };
    job.cwd = Some(cwd);
    Ok(())
}

/// The caller's working directory, where its jobs run unless told otherwise (absolute).
fn current_dir() -> Result<PathBuf> {
    std::env::current_dir()
        .map_err(|e| CommandError::Failed(format!("cannot read the current directory: {e}")))
}

fn path_text(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| CommandError::Invalid(format!("{} is not valid UTF-8", p.display())))
}

/// Stores the jobs and prints the id (one job) or the count; hints when nobody will run them.
fn submit(
    dir: &DataDir,
    jobs: Vec<NewJob>,
    single: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let req = Request::Enqueue { jobs };
    let answer = client::call_answered(dir, &Spool::new_request_id(), &req, reply_timeout())?;
    match error_reply(answer.reply)? {
        Reply::Done => {}
        other => return unexpected(other),
    }
    let n = ids.len();
    match (single, json) {
        (true, false) => writeln!(out, "{}", ids[0])?,
        (true, true) => writeln!(out, "{}", serde_json::json!({ "id": ids[0] }))?,
        (false, false) => writeln!(out, "Enqueued {n} job{}", if n == 1 { "" } else { "s" })?,
        (false, true) => writeln!(out, "{}", serde_json::json!({ "enqueued": n, "ids": ids }))?,
    }
    if !answer.by_supervisor {
        hint_if_no_supervisor(dir);
    }
    Ok(())
}

/// Says so on stderr when no supervisor will run the jobs just queued (with a shared queue,
/// supervisors of other hosts may: no hint).
fn hint_if_no_supervisor(dir: &DataDir) {
    if dir.database_url().is_none() && matches!(dir.holder(), Ok(Holder::Free)) {
        eprintln!("hint: no supervisor is running; `queuectl worker start` runs the queued jobs");
    }
}

fn add(dir: &DataDir, a: AddArgs, json: bool, out: &mut impl Write) -> Result<()> {
    let invalid = |m: String| CommandError::Invalid(m);
    if !matches!(a.command.first(), Some(p) if !p.trim().is_empty()) {
        return Err(invalid("`command` must not be empty".into()));
    }
    let command = shlex::try_join(a.command.iter().map(String::as_str))
        .map_err(|_| invalid("the command must not contain a NUL byte".into()))?;
    let priority = match &a.priority {
        None => None,
        Some(p) => Some(
            p.trim()
                .parse::<i64>()
                .map_err(|_| invalid(format!("--priority must be a whole number, not `{p}`")))?,
        ),
    };
    let max_retries = match &a.max_retries {
        None => None,
        Some(m) => Some(m.trim().parse::<u32>().map_err(|_| {
            invalid(format!(
                "--max-retries must be a whole number >= 0, not `{m}`"
            ))
        })?),
    };
    for (flag, v) in [("--delay", &a.delay), ("--timeout", &a.timeout)] {
        if let Some(v) = v {
            parse_duration(v).map_err(|e| invalid(format!("{flag}: {e}")))?;
        }
    }
    let mut env = std::collections::BTreeMap::new();
    for kv in &a.env {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(invalid(format!("--env expects KEY=VALUE, not `{kv}`")));
        };
        env.insert(k.to_string(), v.to_string());
    }
    let here = current_dir()?;
    let cwd = match &a.cwd {
        None => here,
        Some(c) => {
            let p = here.join(c);
            if !p.is_dir() {
                return Err(invalid(format!("--cwd {}: not a directory", c.display())));
            }
            p
        }
    };
    let spec = JobSpec {
        id: a.id,
        command,
        max_retries,
        priority,
        run_at: a.at,
        delay: a.delay.map(serde_json::Value::String),
        timeout: a.timeout.map(serde_json::Value::String),
        cwd: Some(path_text(&cwd)?),
        env: Some(env),
    };
    let job = spec
        .validate(now_ms(), new_job_id)
        .map_err(|e| invalid(e.to_string()))?;
    submit(dir, vec![job], true, json, out)
}

/// How long `cancel` waits for a running job's end to be recorded.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// `cancel`: jobs that wait go to dead at once; a running job's process group is stopped by
/// the supervisor, and the command waits (bounded) until its end is recorded.
fn cancel(dir: &DataDir, ids: Vec<String>, json: bool, out: &mut impl Write) -> Result<()> {
    let Reply::Each(mut results) = call(dir, &Request::Cancel { ids })? else {
        return Err(CommandError::Unexpected);
    };
    for (id, r) in &mut results {
        let Ok(job) = r else { continue };
        if job.state != JobState::Processing {
            continue;
        }
        let deadline = Instant::now() + CANCEL_WAIT;
        let mut pause = Duration::from_millis(10);
        loop {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
            if let Reply::Job(now) = call(dir, &Request::Show { id: id.clone() })? {
                if now.state != JobState::Processing {
                    *r = Ok(now);
                    break;
                }
            }
            if Instant::now() >= deadline {
                *r = Err(format!(
                    "job `{id}` was signalled but its end is not recorded yet"
                ));
                break;
            }
        }
    }
    print_each(&results, "cancelled", json, out)
}

/// `wait`: blocks until every job is completed or dead. A supervisor answers the request only
/// then; with none running the answer comes at once, and the wait goes on until one starts.
fn wait(
    dir: &DataDir,
    ids: Vec<String>,
    all: bool,
    timeout: Option<String>,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let limit = match &timeout {
        None => None,
        Some(t) => {
            Some(Duration::from_millis(parse_duration(t).map_err(|e| {
                CommandError::Invalid(format!("--timeout: {e}"))
            })?))
        }
    };
    let deadline = limit.map(|l| Instant::now() + l);
    let ids = if all {
        // Page by page: a large queue never travels as one reply.
        let mut ids = Vec::new();
        let mut session = client::Session::open(dir)?;
        let mut after = None;
        loop {
            let req = Request::ListPage {
                states: vec![JobState::Pending, JobState::Processing, JobState::Failed],
                order: ListOrder::Id,
                after: after.take(),
                limit: request::PAGE_MAX,
            };
            match error_reply(session.call(&req, reply_timeout())?)? {
                Reply::Page { jobs, next } => {
                    ids.extend(jobs.into_iter().map(|j| j.id));
                    match next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                other => return unexpected(other),
            }
        }
        ids
    } else {
        ids
    };
    // A part at a time, so that neither a request nor its answer grows with the queue: the
    // parts are waited for in turn, and the later ones are usually finished by then.
    let mut told = false;
    let mut results = Vec::with_capacity(ids.len());
    for (k, part) in ids.chunks(request::PAGE_MAX).enumerate() {
        match wait_part(dir, part, deadline, &mut told)? {
            Some(done) => results.extend(done),
            None => {
                // Timed out: say where every job stands.
                let mut now = results;
                for id in ids.iter().skip(k * request::PAGE_MAX) {
                    if let Reply::Job(job) = call(dir, &Request::Show { id: id.clone() })? {
                        now.push((id.clone(), Ok(job)));
                    }
                }
                print_waited(&now, json, out)?;
                let open = now
                    .iter()
                    .filter(|(_, r)| r.as_ref().is_ok_and(|j| !j.state.is_finished()))
                    .count();
                return Err(CommandError::WaitTimeout(timeout.unwrap_or_default(), open));
            }
        }
    }
    print_waited(&results, json, out)
}

/// Each job's state (or why it has none), as `wait` answers.
type Answers = Vec<(String, Result<Job, String>)>;

/// Waits until every job of `ids` is finished: their states then, or `None` at `deadline`.
fn wait_part(
    dir: &DataDir,
    ids: &[String],
    deadline: Option<Instant>,
    told: &mut bool,
) -> Result<Option<Answers>> {
    // A shared queue answers at once, whichever host runs the jobs: look again, less and less
    // often (one read each time).
    let mut pause = Duration::from_millis(50);
    loop {
        // "Forever" is ten years: far enough, and no overflow of the clock.
        let left = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(10 * 365 * 24 * 3600));
        let results = match client::call(dir, &Request::Wait { ids: ids.to_vec() }, left) {
            Ok(Reply::Each(results)) => results,
            Ok(other) => return unexpected(other),
            Err(ClientError::NoAnswer { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let unknown: Vec<&String> = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .collect();
        if let Some(e) = unknown.first() {
            return Err(CommandError::Invalid((*e).clone()));
        }
        if !results.is_empty() && crate::spool::request::all_finished(&results) {
            return Ok(Some(results));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        if dir.database_url().is_some() {
            std::thread::sleep(deadline.map_or(pause, |d| {
                pause.min(d.saturating_duration_since(Instant::now()))
            }));
            pause = (pause * 2).min(Duration::from_millis(500));
            continue;
        }
        // Answered without waiting: nobody runs the jobs (or the supervisor is stopping).
        if !matches!(dir.holder(), Ok(Holder::Supervisor(_))) {
            if !*told {
                eprintln!(
                    "queuectl: no supervisor is running; waiting for one to start (`queuectl worker start`)"
                );
                *told = true;
            }
            while !matches!(dir.holder(), Ok(Holder::Supervisor(_)))
                && deadline.is_none_or(|d| Instant::now() < d)
            {
                std::thread::sleep(Duration::from_millis(250));
            }
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One line per job (`job1: completed`, `job2: dead (exit code 1)`); an error if any is dead.
fn print_waited(
    results: &[(String, Result<Job, String>)],
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let jobs: Vec<&Job> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    if json {
        let views: Vec<JobView> = jobs.iter().map(|j| JobView::from(*j)).collect();
        writeln!(out, "{}", to_json(&views))?;
    } else {
        for j in &jobs {
            match (j.state, &j.last_error) {
                (JobState::Dead, Some(e)) => writeln!(out, "{}: dead ({})", j.id, shorten(e, 200))?,
                (JobState::Completed | JobState::Dead, _) => {
                    writeln!(out, "{}: {}", j.id, j.state)?
                }
                (st, _) => writeln!(out, "{}: {st} (not finished)", j.id)?,
            }
        }
    }
    let dead = jobs.iter().filter(|j| j.state == JobState::Dead).count();
    if dead > 0 && jobs.iter().all(|j| j.state.is_finished()) {
        return Err(CommandError::Dead {
            dead,
            total: jobs.len(),
        });
    }
    Ok(())
}

/// Sends a request about several jobs and prints a line per job; fails if any could not be
/// changed (after printing why, one line each on stderr).
fn each(dir: &DataDir, req: Request, done: &str, json: bool, out: &mut impl Write) -> Result<()> {
    let Reply::Each(results) = call(dir, &req)? else {
        return Err(CommandError::Unexpected);
    };
    print_each(&results, done, json, out)
}

fn print_each(
    results: &[(String, Result<Job, String>)],
    done: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if json {
        let items: Vec<serde_json::Value> = results
            .iter()
            .map(|(id, r)| match r {
                Ok(job) => serde_json::json!({ "id": id, "ok": true, "state": job.state }),
                Err(e) => serde_json::json!({ "id": id, "ok": false, "error": e }),
            })
            .collect();
        writeln!(out, "{}", to_json(&items))?;
    } else {
        for (id, r) in results {
            match r {
                Ok(_) if done.contains("{}") => writeln!(out, "{}", done.replace("{}", id))?,
                Ok(_) => writeln!(out, "{id}: {done}")?,
                Err(e) => eprintln!("error: {e}"),
            }
        }
    }
    if failed > 0 {
        return Err(CommandError::Some {
            failed,
            total: results.len(),
        });
    }
    Ok(())
}

/// What `dlq retry` says of each job (the Node.js queuectl's words).
const RETRIED: &str = "Job {} moved from the DLQ to pending";

fn dlq_retry(
    dir: &DataDir,
    ids: Vec<String>,
    all: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    if all {
        let Reply::Each(results) = call(dir, &Request::DlqRetryAll)? else {
            return Err(CommandError::Unexpected);
        };
        if results.is_empty() && !json {
            writeln!(out, "No dead jobs.")?;
            return Ok(());
        }
        return print_each(&results, RETRIED, json, out);
    }
    if let [id] = ids.as_slice() {
        // One job: its error is the command's (exit status 2 for an unknown or live job).
        return match call(dir, &Request::DlqRetry { id: id.clone() })? {
            Reply::Retried(job) => print_each(&[(id.clone(), Ok(job))], RETRIED, json, out),
            other => unexpected(other),
        };
    }
    // One request per id: each is applied once even if the spool replays it.
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        match call(dir, &Request::DlqRetry { id: id.clone() }) {
            Ok(Reply::Retried(job)) => results.push((id, Ok(job))),
            Ok(other) => return unexpected(other),
            Err(CommandError::Invalid(e)) => results.push((id, Err(e))),
            Err(e) => return Err(e),
        }
    }
    print_each(&results, RETRIED, json, out)
}

/// Above this many jobs, `enqueue --file --json` prints the count and the first and last ids
/// instead of every id.
const IDS_IN_JSON: usize = 100_000;

/// Lines between two progress reports on a terminal.
const PROGRESS_EVERY: u64 = 100_000;

/// The ids of a bulk enqueue, kept only while few enough to print.
#[derive(Default)]
struct NewIds {
    count: u64,
    ids: Vec<String>,
    first: Option<String>,
    last: Option<String>,
}

impl NewIds {
    fn push(&mut self, id: &str) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(id.to_string());
        }
        self.last = Some(id.to_string());
        if self.count <= IDS_IN_JSON as u64 {
            self.ids.push(id.to_string());
        } else if !self.ids.is_empty() {
            self.ids = Vec::new();
        }
    }

    /// `{"enqueued": N, "ids": [...]}`, or past [`IDS_IN_JSON`] jobs
    /// `{"enqueued": N, "first": ID, "last": ID}`.
    fn json(&self) -> serde_json::Value {
        if self.count <= IDS_IN_JSON as u64 {
            serde_json::json!({ "enqueued": self.count, "ids": self.ids })
        } else {
            serde_json::json!({
                "enqueued": self.count,
                "first": self.first,
                "last": self.last,
            })
        }
    }
}

/// Bulk enqueue: every line is validated while it is copied, as a job, into a file in the
/// spool (a bad line refuses the whole input before anything is stored); then whoever owns the
/// store streams that file into the store in chunks and publishes it as one step.
fn enqueue_file(
    dir: &DataDir,
    path: &Path,
    now: u64,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let spool = Spool::open(dir.root()).map_err(ClientError::from)?;
    let batch = Spool::new_request_id();
    let file = spool.create_bulk(&batch).map_err(ClientError::from)?;
    let copied = copy_jobs(path, now, file);
    let ids = match copied {
        Ok(ids) => ids,
        Err(e) => {
            let _ = spool.remove_bulk(&batch);
            return Err(e);
        }
    };
    // Wait for the owner in proportion to the work: a busy machine stores a few thousand jobs
    // a second at worst.
    let timeout = reply_timeout() + Duration::from_micros(ids.count.saturating_mul(300));
    let req = Request::EnqueueBulk {
        batch: batch.clone(),
    };
    let answer = client::call_answered(dir, &batch, &req, timeout);
    if !matches!(answer, Err(ClientError::Queued { .. })) {
        // Queued: the file must stay for the request; otherwise it has served.
        let _ = spool.remove_bulk(&batch);
    }
    let answer = answer?;
    match error_reply(answer.reply)? {
        Reply::Done if json => writeln!(out, "{}", ids.json())?,
        Reply::Done => {
            let n = ids.count;
            writeln!(out, "Enqueued {n} job{}", if n == 1 { "" } else { "s" })?
        }
        other => return unexpected(other),
    }
    if !answer.by_supervisor {
        hint_if_no_supervisor(dir);
    }
    Ok(())
}

/// Reads JSON Lines (blank lines skipped), validating each and writing it to `file`; the first
/// bad line refuses the whole input. The file is on disk when this returns.
fn copy_jobs(path: &Path, now: u64, file: std::fs::File) -> Result<NewIds> {
    let cannot =
        |e: io::Error| CommandError::Invalid(format!("cannot read {}: {e}", path.display()));
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(io::BufReader::with_capacity(1 << 20, io::stdin()))
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
    let cannot_write = |e: String| CommandError::Failed(format!("cannot store the jobs: {e}"));
    let here = current_dir()?;
    let progress = io::stderr().is_terminal();
    let mut ids = NewIds::default();
    let mut writer = io::BufWriter::with_capacity(1 << 20, file);
    let mut lines = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(cannot)?;
        lines += 1;
        if progress && lines.is_multiple_of(PROGRESS_EVERY) {
            eprint!("\rRead {lines} lines");
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut job = NewJob::from_json(&line, now, new_job_id).map_err(|e| {
            if progress && lines >= PROGRESS_EVERY {
                eprintln!();
            }
            CommandError::Invalid(format!("{}: line {}: {e}", path.display(), i + 1))
        })?;
        set_cwd(&mut job, &here)?;
        ids.push(&job.id);
        request::write_bulk_job(&mut writer, &job).map_err(|e| cannot_write(e.to_string()))?;
    }
    let file = writer
        .into_inner()
        .map_err(|e| cannot_write(e.error().to_string()))?;
    file.sync_all().map_err(|e| cannot_write(e.to_string()))?;
    if progress && lines >= PROGRESS_EVERY {
        eprintln!("\rRead {lines} lines; storing {} jobs", ids.count);
    }
    Ok(ids)
}

fn status(dir: &DataDir, json: bool, out: &mut impl Write) -> Result<()> {
    let Reply::Status(s) = call(dir, &Request::Status)? else {
        return Err(CommandError::Unexpected);
    };
    let data_dir = std::path::absolute(dir.root()).unwrap_or_else(|_| dir.root().to_path_buf());
    if json {
        let mut v = status_json(&s);
        v["data_dir"] = data_dir.display().to_string().into();
        if dir.database_url().is_some() {
            v["hosts"] = serde_json::to_value(&s.hosts).unwrap_or_default();
        }
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let mut t = Table::new();
    t.set_header(["STATE", "JOBS"]);
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
    writeln!(out, "{}", render(&mut t, &[], &[]))?;
    if dir.database_url().is_some() {
        // A shared queue: every supervisor, host by host.
        if s.hosts.is_empty() {
            writeln!(out, "Workers: 0 (no supervisor running on any host)")?;
        } else {
            let mut h = Table::new();
            h.set_header(["HOST", "PID", "WORKERS", "BUSY", "HEARTBEAT"]);
            for host in &s.hosts {
                h.add_row([
                    Cell::new(&host.host),
                    Cell::new(host.pid),
                    Cell::new(host.workers).set_alignment(CellAlignment::Right),
                    Cell::new(host.busy).set_alignment(CellAlignment::Right),
                    Cell::new(format!("{:.1}s ago", host.heartbeat_age_ms as f64 / 1000.0)),
                ]);
            }
            writeln!(out, "{}", render(&mut h, &[], &[]))?;
        }
        writeln!(out, "Data directory: {}", data_dir.display())?;
        return Ok(());
    }
    match s.owner.supervisor_pid {
        Some(pid) => writeln!(
            out,
            "Workers: {} ({} busy), supervisor pid {pid}{}",
            s.owner.workers,
            s.owner.busy_workers,
            if s.owner.stopping {
                ", stopping"
            } else if s.owner.paused {
                ", paused"
            } else {
                ""
            }
        )?,
        None => writeln!(out, "Workers: 0 (no supervisor running)")?,
    }
    if s.owner.out_of_space {
        writeln!(
            out,
            "Store: out of space (the disk is full); no new job starts, {} finished run{} kept in memory until there is room",
            s.owner.unstored,
            if s.owner.unstored == 1 { "" } else { "s" }
        )?;
    }
    writeln!(out, "Data directory: {}", data_dir.display())?;
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
        "paused": s.owner.paused,
        "stopping": s.owner.stopping,
        "out_of_space": s.owner.out_of_space,
        "unstored_runs": s.owner.unstored,
    })
}

/// `pending`, or several separated by commas (`failed,dead`), without repeats, in the order
/// given.
fn parse_states(text: &str) -> Result<Vec<JobState>> {
    let mut states = Vec::new();
    for part in text.split(',') {
        let st = part
            .trim()
            .parse::<JobState>()
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        if !states.contains(&st) {
            states.push(st);
        }
    }
    Ok(states)
}

/// Rows `list` prints on a terminal when not told how many.
const LIST_SCREENFUL: usize = 50;

/// `--sort`, in the store's words.
fn parse_sort(text: &str) -> Result<ListOrder> {
    match text {
        "id" => Ok(ListOrder::Id),
        "next-run" => Ok(ListOrder::NextRun),
        other => Err(CommandError::Invalid(format!(
            "--sort: `{other}` is not an order; use id or next-run"
        ))),
    }
}

/// `list`: pages of at most [`request::PAGE_MAX`] jobs, each asked for on its own (a request
/// through the spool when a supervisor runs, else read directly with the store open once) and
/// printed before the next is read, so neither memory nor any reply grows with the queue.
fn list(dir: &DataDir, args: ListArgs, json: bool, out: &mut impl Write) -> Result<()> {
    let states = match &args.state {
        None => Vec::new(),
        Some(s) => parse_states(s)?,
    };
    let order = parse_sort(&args.sort)?;
    // A screenful on a terminal, unless asked for more; programs get everything.
    let terminal = io::stdout().is_terminal();
    let screenful = !json && !args.all && args.limit.is_none() && terminal;
    let limit = match args.limit {
        Some(n) => n,
        None if screenful => LIST_SCREENFUL,
        None => usize::MAX,
    };
    let mut session = client::Session::open(dir)?;
    let mut skip = args.offset;
    let mut left = limit;
    let mut after: Option<Vec<u8>> = None;
    let mut printer = ListPrinter::new(json, terminal);
    let mut more = false;
    while left > 0 {
        // One more than wanted tells whether there are more (for the footnote).
        let want = skip.saturating_add(left).saturating_add(1);
        let req = Request::ListPage {
            states: states.clone(),
            order,
            after: after.take(),
            limit: want.min(request::PAGE_MAX),
        };
        let (jobs, next) = match error_reply(session.call(&req, reply_timeout())?)? {
            Reply::Page { jobs, next } => (jobs, next),
            other => return unexpected(other),
        };
        let from = skip.min(jobs.len());
        skip -= from;
        let page = &jobs[from..];
        let shown = page.len().min(left);
        more = page.len() > shown || (shown == left && next.is_some());
        printer.page(out, &page[..shown])?;
        left -= shown;
        match next {
            Some(n) if left > 0 => after = Some(n),
            _ => break,
        }
    }
    drop(session);
    if printer.finish(out)? == 0 && !json {
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        match names.as_slice() {
            [] => writeln!(out, "No jobs.")?,
            names => writeln!(out, "No {} jobs.", names.join(" or "))?,
        }
        return Ok(());
    }
    if screenful && more {
        writeln!(
            out,
            "(the first {limit}; --all for every job, --limit N --offset M for a page)"
        )?;
    }
    Ok(())
}

/// Prints `list` page by page: a JSON array written as it comes, or a table whose header is
/// printed once (its columns kept at least as wide as on earlier pages) when the output is not
/// a terminal, and above each page on a terminal (where the table fits its width).
struct ListPrinter {
    json: bool,
    terminal: bool,
    printed: usize,
    /// The widest each column has been so far.
    widths: Vec<usize>,
}

impl ListPrinter {
    fn new(json: bool, terminal: bool) -> ListPrinter {
        // A width from $COLUMNS may wrap the header: then it is printed above every page.
        let terminal = terminal || std::env::var_os("COLUMNS").is_some();
        ListPrinter {
            json,
            terminal,
            printed: 0,
            widths: Vec::new(),
        }
    }

    fn page(&mut self, out: &mut impl Write, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        if self.json {
            for job in jobs {
                let text = to_json(&JobView::from(job));
                out.write_all(if self.printed == 0 { b"[\n" } else { b",\n" })?;
                let mut lines = text.lines().peekable();
                while let Some(line) = lines.next() {
                    write!(out, "  {line}")?;
                    if lines.peek().is_some() {
                        out.write_all(b"\n")?;
                    }
                }
                self.printed += 1;
            }
            return Ok(());
        }
        let mut table = jobs_table(jobs);
        let continued = self.printed > 0 && !self.terminal;
        if continued {
            // The header (left out below) makes each column as wide as it has been.
            let header: Vec<String> = JOB_COLUMNS
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let w = self.widths.get(i).copied().unwrap_or(0);
                    format!("{name:<w$}")
                })
                .collect();
            table.set_header(header);
        }
        // COMMAND and LAST ERROR wrap; UPDATED, NEXT RUN, PRIORITY, LAST ERROR go first.
        let text = render(&mut table, &[5, 8], &[6, 7, 4, 8]);
        for (i, w) in table.column_max_content_widths().iter().enumerate() {
            if i >= self.widths.len() {
                self.widths.push(0);
            }
            self.widths[i] = self.widths[i].max(usize::from(*w));
        }
        let text = if continued {
            text.split_once('\n').map_or("", |(_, rows)| rows)
        } else {
            &text
        };
        writeln!(out, "{text}")?;
        self.printed += jobs.len();
        Ok(())
    }

    /// Ends the output; returns how many jobs were printed.
    fn finish(&mut self, out: &mut impl Write) -> Result<usize> {
        if self.json {
            if self.printed == 0 {
                writeln!(out, "[]")?;
            } else {
                writeln!(out, "\n]")?;
            }
        }
        Ok(self.printed)
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// A table as printed: no borders, no trailing spaces, as wide as the terminal allows
/// (`$COLUMNS` when set, else the terminal's width; unlimited when not a terminal). Only the
/// `flexible` columns wrap; if the others alone do not fit, those in `drop_first` are left out,
/// in that order.
fn render(t: &mut Table, flexible: &[usize], drop_first: &[usize]) -> String {
    /// The least a wrapping column is given before others are dropped.
    const MIN_FLEXIBLE: u16 = 16;
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if let Some(w) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<u16>().ok())
        .filter(|w| *w > 0)
    {
        t.set_width(w);
    }
    if let Some(width) = t.width() {
        let widths = t.column_max_content_widths();
        let mut hidden: Vec<usize> = Vec::new();
        let needed = |hidden: &[usize]| -> u32 {
            widths
                .iter()
                .enumerate()
                .filter(|(i, _)| !hidden.contains(i))
                .map(|(i, w)| {
                    let w = if flexible.contains(&i) {
                        (*w).min(MIN_FLEXIBLE)
                    } else {
                        *w
                    };
                    u32::from(w) + 2
                })
                .sum()
        };
        for &i in drop_first {
            if needed(&hidden) <= u32::from(width) {
                break;
            }
            hidden.push(i);
        }
        for i in 0..widths.len() {
            if let Some(col) = t.column_mut(i) {
                if hidden.contains(&i) {
                    col.set_constraint(ColumnConstraint::Hidden);
                } else if flexible.contains(&i) {
                    let least = widths.get(i).copied().unwrap_or(0).min(MIN_FLEXIBLE);
                    col.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(least)));
                } else {
                    col.set_constraint(ColumnConstraint::ContentWidth);
                }
            }
        }
    }
    t.trim_fmt()
}

/// The columns of [`jobs_table`].
const JOB_COLUMNS: [&str; 9] = [
    "ID",
    "STATE",
    "RUNS",
    "FAILURES",
    "PRIORITY",
    "COMMAND",
    "UPDATED",
    "NEXT RUN",
    "LAST ERROR",
];

fn jobs_table(jobs: &[Job]) -> Table {
    let mut t = Table::new();
    t.set_header(JOB_COLUMNS);
    for j in jobs {
        t.add_row([
            escape_control(&j.id).into_owned(),
            j.state.to_string(),
            j.runs.to_string(),
            format!("{} of {}", j.attempts, j.failures_allowed()),
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

/// One line of at most `max` characters, control characters escaped.
fn shorten(s: &str, max: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let one_line = escape_control(&one_line).into_owned();
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
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let env = if job.env.is_empty() {
        "-".to_string()
    } else {
        job.env
            .iter()
            .map(|(k, v)| format!("{k}={}", shlex::try_quote(v).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let lines: [(&str, String); 14] = [
        ("id", view.id),
        ("command", view.command),
        ("state", view.state.to_string()),
        ("attempts", job.attempts_summary()),
        ("priority", view.priority.to_string()),
        ("timeout", opt(job.timeout_ms.map(format_duration))),
        ("cwd", opt(view.cwd)),
        ("env", env),
        ("created_at", view.created_at),
        ("updated_at", view.updated_at),
        ("available_at", opt(view.available_at)),
        ("locked_by", opt(view.locked_by)),
        ("locked_at", opt(view.locked_at)),
        ("last_error", opt(view.last_error)),
    ];
    for (k, v) in lines {
        writeln!(out, "{k:<13} {}", escape_control(&v))?;
    }
    Ok(())
}

/// How often a follower looks for more output in the live files.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// How often a follower asks whether the run has ended while its live files are not there.
const FOLLOW_ASK_EVERY: Duration = Duration::from_millis(500);

/// Reads what was added to `file` since the last call and writes it to `to`.
fn copy_new(file: &mut Option<std::fs::File>, to: &mut dyn Write) -> Result<()> {
    if let Some(f) = file {
        io::copy(f, to)?;
        to.flush()?;
    }
    Ok(())
}

/// Whether an open file was removed (the supervisor removes a live file once the run's output
/// is stored).
fn unlinked(file: &Option<std::fs::File>) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.as_ref()
        .and_then(|f| f.metadata().ok())
        .is_some_and(|m| m.nlink() == 0)
}

/// `logs --follow` of a running run: its output as it is written (stdout to stdout, stderr to
/// stderr) until the run ends, then how it ended.
fn follow(dir: &DataDir, job: &Job, run: u32, out: &mut impl Write) -> Result<()> {
    let (po, pe) = dir.live_paths(&job.id, run);
    writeln!(
        out,
        "=== job {}, run {run} of {}: running ===",
        job.id, job.runs
    )?;
    out.flush()?;
    let (mut fo, mut fe) = (None, None);
    let mut asked = Instant::now();
    let err = &mut io::stderr();
    loop {
        if fo.is_none() {
            fo = std::fs::File::open(&po).ok();
        }
        if fe.is_none() {
            fe = std::fs::File::open(&pe).ok();
        }
        copy_new(&mut fo, out)?;
        copy_new(&mut fe, err)?;
        // Ask whether the run ended once its live copy is removed, and now and then anyway
        // (more often while there is none to read).
        let every = if fo.is_none() {
            FOLLOW_ASK_EVERY
        } else {
            FOLLOW_ASK_EVERY * 10
        };
        let gone = unlinked(&fo) || asked.elapsed() >= every;
        if gone {
            asked = Instant::now();
            let req = Request::Logs {
                id: job.id.clone(),
                run: Some(run),
            };
            let Reply::Logs {
                job: now, output, ..
            } = call(dir, &req)?
            else {
                return Err(CommandError::Unexpected);
            };
            let ended = output.is_some() || now.state != JobState::Processing || now.runs != run;
            if ended {
                copy_new(&mut fo, out)?;
                copy_new(&mut fe, err)?;
                match output {
                    // Never saw the live copy: print what was stored.
                    Some(o) if fo.is_none() => {
                        out.write_all(&o.stdout)?;
                        err.write_all(&o.stderr)?;
                        writeln!(out, "=== run {run}: {} ===", o.outcome.describe())?;
                    }
                    Some(o) => writeln!(out, "=== run {run}: {} ===", o.outcome.describe())?,
                    None => writeln!(out, "=== run {run}: ended ({}) ===", now.state)?,
                }
                return Ok(());
            }
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// `logs --supervisor`: worker.log, and with `follow` what is added to it, until interrupted.
fn supervisor_log(dir: &DataDir, follow: bool, json: bool, out: &mut impl Write) -> Result<()> {
    let path = dir.log_path();
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !follow => {
            return Err(CommandError::Invalid(format!(
                "no supervisor log yet ({} does not exist)",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => loop {
            std::thread::sleep(FOLLOW_ASK_EVERY);
            if let Ok(f) = std::fs::File::open(&path) {
                break f;
            }
        },
        Err(e) => {
            return Err(CommandError::Failed(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    if json && !follow {
        let mut text = Vec::new();
        io::Read::read_to_end(&mut file, &mut text)?;
        let v = serde_json::json!({
            "path": path.display().to_string(),
            "log": String::from_utf8_lossy(&text),
        });
        writeln!(out, "{}", to_json(&v))?;
        return Ok(());
    }
    io::copy(&mut file, out)?;
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        io::copy(&mut file, out)?;
        out.flush()?;
    }
}

/// Reads a live output file, if it is there.
fn read_live(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

fn logs(
    dir: &DataDir,
    id: String,
    run: Option<u32>,
    follow_it: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let Reply::Logs { job, run, output } = call(dir, &Request::Logs { id, run })? else {
        return Err(CommandError::Unexpected);
    };
    let running = job.state == JobState::Processing && run == job.runs;
    if running && output.is_none() {
        if follow_it && !json {
            return follow(dir, &job, run, out);
        }
        let (po, pe) = dir.live_paths(&job.id, run);
        let (so, se) = (read_live(&po), read_live(&pe));
        if json {
            let v = serde_json::json!({
                "id": job.id,
                "run": run,
                "runs": job.runs,
                "running": true,
                "outcome": null,
                "success": null,
                "finished_at": null,
                "duration_ms": null,
                "stdout": String::from_utf8_lossy(&so),
                "stderr": String::from_utf8_lossy(&se),
            });
            writeln!(out, "{}", to_json(&v))?;
            return Ok(());
        }
        writeln!(
            out,
            "=== job {}, run {run} of {}: still running; its output so far ===",
            job.id, job.runs
        )?;
        for (name, bytes) in [("stdout", &so), ("stderr", &se)] {
            writeln!(out, "--- {name} ---")?;
            out.write_all(bytes)?;
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                writeln!(out)?;
            }
        }
        return Ok(());
    }
    if json {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let v = serde_json::json!({
            "id": job.id,
            "run": run,
            "runs": job.runs,
            "running": running && output.is_none(),
            "outcome": output.as_ref().map(|o| o.outcome.describe()),
            "success": output.as_ref().map(|o| o.outcome.is_success()),
            "finished_at": output.as_ref().map(|o| format_ts(o.finished_at)),
            "duration_ms": output.as_ref().map(|o| o.duration_ms),
            "stdout": output.as_ref().map(|o| text(&o.stdout)).unwrap_or_default(),
            "stderr": output.as_ref().map(|o| text(&o.stderr)).unwrap_or_default(),
        });
        writeln!(out, "{}", to_json(&v))?;
        return Ok(());
    }
    match output {
        None if running => writeln!(out, "(run {run} of job {} is still running)", job.id)?,
        None => writeln!(out, "(run {run} of job {} left no output)", job.id)?,
        Some(o) => {
            // A time-out already says how long the run took.
            let took = match o.outcome {
                Outcome::TimedOut { .. } => String::new(),
                _ => format!(", took {:.2}s", o.duration_ms as f64 / 1000.0),
            };
            writeln!(
                out,
                "=== job {}, run {run} of {}: {}{took}, finished {} ===",
                job.id,
                job.runs,
                o.outcome.describe(),
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

fn config(dir: &DataDir, c: ConfigCommand, json: bool, out: &mut impl Write) -> Result<()> {
    let parse_key = |k: &str| {
        k.parse::<ConfigKey>()
            .map_err(|e| CommandError::Invalid(e.to_string()))
    };
    let pair = |out: &mut dyn Write, key: ConfigKey, v: u64| -> Result<()> {
        if json {
            writeln!(out, "{}", serde_json::json!({ key.as_str(): v }))?;
        } else {
            writeln!(out, "{} = {}", key.as_str(), key.format_value(v))?;
        }
        Ok(())
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
                Reply::Done => pair(out, k, v)?,
                other => return unexpected(other),
            }
        }
        ConfigCommand::Get { key } => {
            let k = parse_key(&key)?;
            let Reply::Config(cfg) = call(dir, &Request::Config)? else {
                return Err(CommandError::Unexpected);
            };
            if json {
                pair(out, k, cfg.get(k))?;
            } else {
                writeln!(out, "{}", k.format_value(cfg.get(k)))?;
            }
        }
        ConfigCommand::Show => {
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
                t.set_header(["KEY", "VALUE"]);
                for k in ConfigKey::ALL {
                    t.add_row([k.as_str().to_string(), k.format_value(cfg.get(k))]);
                }
                writeln!(out, "{}", render(&mut t, &[], &[]))?;
            }
        }
    }
    Ok(())
}

fn clean(
    dir: &DataDir,
    state: &str,
    older_than: Option<String>,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let state = match state.parse::<JobState>() {
        Ok(st @ (JobState::Completed | JobState::Dead)) => st,
        _ => {
            return Err(CommandError::Invalid(format!(
                "--state must be completed or dead, not `{state}`"
            )))
        }
    };
    let older_than_ms = match older_than {
        None => None,
        Some(d) => Some(
            parse_duration(&d).map_err(|e| CommandError::Invalid(format!("--older-than: {e}")))?,
        ),
    };
    let req = Request::Clean {
        state,
        older_than_ms,
    };
    let Reply::Removed(n) = call(dir, &req)? else {
        return Err(CommandError::Unexpected);
    };
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "removed": n, "state": state })
        )?;
    } else {
        writeln!(
            out,
            "Removed {n} {state} job{}",
            if n == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

fn export(dir: &DataDir, path: &Path, force: bool, json: bool, out: &mut impl Write) -> Result<()> {
    // A directory is refused by the export itself: "use --force" would be wrong advice.
    if !force && path.exists() && !path.is_dir() {
        return Err(ExportError::Exists {
            path: path.to_path_buf(),
        }
        .into());
    }
    // The owner writes the file (a supervisor may run elsewhere): give it the full path.
    let path = std::path::absolute(path)
        .map_err(|e| CommandError::Invalid(format!("cannot export to {}: {e}", path.display())))?;
    let req = Request::Export {
        path: path.clone(),
        force,
    };
    // An export takes as long as the queue is large: wait for it however long (while the
    // owner is alive: if it goes away, this command takes the store over and exports itself).
    let summary = match error_reply(client::call(dir, &req, Duration::MAX)?)? {
        Reply::Exported { jobs, config_keys } => export::ExportSummary { jobs, config_keys },
        other => return unexpected(other),
    };
    let path = path.as_path();
    if json {
        let v = serde_json::json!({
            "jobs": summary.jobs,
            "config_keys": summary.config_keys,
            "path": path.display().to_string(),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "Exported {} jobs and {} config keys to {}",
            summary.jobs,
            summary.config_keys,
            path.display()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_print_every_id_then_only_the_count_and_ends() {
        let mut ids = NewIds::default();
        ids.push("a");
        ids.push("b");
        assert_eq!(
            ids.json(),
            serde_json::json!({"enqueued": 2, "ids": ["a", "b"]})
        );
        for i in 0..IDS_IN_JSON {
            ids.push(&format!("x{i}"));
        }
        let v = ids.json();
        assert_eq!(v["enqueued"], IDS_IN_JSON as u64 + 2);
        assert_eq!(v["first"], "a");
        assert_eq!(v["last"], format!("x{}", IDS_IN_JSON - 1));
        assert!(ids.ids.is_empty(), "the ids are not kept once too many");
    }
}
