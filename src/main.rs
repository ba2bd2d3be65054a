//! The `queuectl` binary: parse the command line, run it, map errors to exit statuses
//! (0 ok, 1 failure, 2 invalid input, 3 request queued but not yet confirmed).

use clap::Parser;

fn main() {
    let cli = queuectl::cli::Cli::parse();
    if let Err(e) = queuectl::cli::commands::run(cli) {
        if e.is_broken_pipe() {
            std::process::exit(0);
        }
        eprintln!("error: {}", one_line(&e));
        std::process::exit(e.exit_code());
    }
}

/// The error and its causes, on one line (a cause already quoted in the message is skipped).
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    for cause in std::iter::successors(e.source(), |c| c.source()) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
    }
    msg.replace('\n', " ")
}
