//! Log lines in the seed's format, `[2025-11-09T08:21:13.456Z] [INFO] message`, written to
//! `worker.log` in the data directory and, in the foreground, to the console. `RUST_LOG`
//! filters them (default `info`).

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::model::{format_ts, now_ms};

/// The seed's line format.
struct SeedFormat;

impl<S, N> FormatEvent<S, N> for SeedFormat
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
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the global logger: to `log_file` (appending) and, with `console`, to stderr too.
/// A log file that cannot be opened is reported on stderr and logging goes to the console.
pub fn init(log_file: &Path, console: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let file = OpenOptions::new().create(true).append(true).open(log_file);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(SeedFormat);
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
