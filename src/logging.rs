//! Log lines in the Node.js queuectl's format, `[2025-11-09T08:21:13.456Z] [INFO] message`, written to
//! `worker.log` in the data directory and, in the foreground, to the console. `RUST_LOG`
//! filters them (default `info`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::model::{escape_control, format_ts, now_ms, Job, RetryDecision};

/// The Node.js queuectl's line format.
struct NodeFormat;

impl<S, N> FormatEvent<S, N> for NodeFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(
            writer,
            "[{}] [{}] ",
            format_ts(now_ms()),
            event.metadata().level()
        )?;
        // A job's stderr ends up in messages: escape control characters, so that it can neither
        // start a line of its own nor send escape sequences to a terminal.
        let mut message = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut message), event)?;
        writeln!(writer, "{}", escape_control(&message))
    }
}

/// Installs the global logger: to `log_file` (appending) and, with `console`, to stderr too.
/// A log file that cannot be opened is reported on stderr and logging goes to the console.
pub fn init(log_file: &Path, console: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let file = open_log(log_file);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(NodeFormat);
    let result = match (file, console) {
        (Ok(f), true) => builder
            .with_writer(Mutex::new(f).and(std::io::stderr))
            .try_init(),
        (Ok(f), false) => builder.with_writer(Mutex::new(f)).try_init(),
        (Err(e), _) => {
            eprintln!("queuectl: cannot open {}: {e}", log_file.display());
            builder.with_writer(std::io::stderr).try_init()
        }
    };
    // Already installed (tests): keep the first.
    drop(result);
}

/// Installs the global logger for a process whose stderr belongs to the user's command (a
/// command that owns the store for a moment, and recovers it): to `log_file` only, and not at
/// all if it cannot be opened (the command's own output stays as it is).
pub fn init_file_only(log_file: &Path) {
    let Ok(file) = open_log(log_file) else {
        return;
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let result = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(NodeFormat)
        .with_writer(Mutex::new(file))
        .try_init();
    drop(result);
}

/// Opens the log for appending (created with mode 0600): never through a symbolic link, and only
/// a regular file of this user's.
fn open_log(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "not a regular file of this user's",
        ));
    }
    Ok(file)
}

/// Logs a failed run in the Node.js queuectl's words (its "attempt" is our failed run; the
/// count is the job's `attempts`).
pub fn log_failure(job: &Job, decision: RetryDecision, what: &str) {
    match decision {
        RetryDecision::Retry { delay_secs, .. } => tracing::warn!(
            "Job {} {what} (attempt {}/{}) - retrying in {delay_secs}s",
            job.id,
            job.attempts,
            job.max_retries
        ),
        RetryDecision::Dead => tracing::error!(
            "Job {} {what} after {} attempt{} - moved to DLQ",
            job.id,
            job.attempts,
            if job.attempts == 1 { "" } else { "s" }
        ),
    }
}
