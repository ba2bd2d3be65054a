//! The `queuectl` binary: parse the command line, run it, map errors to exit statuses
//! (0 ok, 1 failure, 2 invalid input, 3 request queued but not yet confirmed).

use clap::Parser;

fn main() {
    let cli = queuectl::cli::Cli::parse();
    if let Err(e) = queuectl::commands::run(cli) {
        if e.is_broken_pipe() {
            std::process::exit(0);
        }
        eprintln!("error: {}", one_line(&e));
        std::process::exit(e.exit_code());
    }
}

/// The error and its causes, on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s = s.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        source = s_source(source);
    }
    msg.replace('\n', " ")
}

fn s_source<'a>(
    e: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    e.and_then(|e| e.source())
}
