//! Pure scheduling decisions of the supervisor: how long to sleep, and what an attempt's
//! outcome means for the job. No I/O, no clock: everything comes in as arguments.

use std::time::Duration;

use crate::model::{Millis, Outcome};

/// How much of stderr goes into `last_error`.
const ERROR_TAIL_CHARS: usize = 500;

/// How long the event loop may sleep: until the next scheduled job is due, and never longer
/// than the poll interval.
pub fn sleep_for(now: Millis, next_scheduled: Option<Millis>, poll_interval_ms: u64) -> Duration {
    let cap = poll_interval_ms.max(1);
    let ms = match next_scheduled {
        Some(at) => at.saturating_sub(now).min(cap),
        None => cap,
    };
    Duration::from_millis(ms)
}

/// `last_error` for a failed attempt: what happened, then the end of its stderr.
pub fn last_error(outcome: &Outcome, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let mut msg = outcome.describe();
    if !text.is_empty() {
        let skip = text.chars().count().saturating_sub(ERROR_TAIL_CHARS);
        let tail: String = text.chars().skip(skip).collect();
        msg.push_str(": ");
        if skip > 0 {
            msg.push('…');
        }
        msg.push_str(&tail);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_next_job_but_no_longer_than_the_poll_interval() {
        assert_eq!(sleep_for(1000, None, 500), Duration::from_millis(500));
        assert_eq!(sleep_for(1000, Some(1200), 500), Duration::from_millis(200));
        assert_eq!(sleep_for(1000, Some(900), 500), Duration::ZERO);
        assert_eq!(
            sleep_for(1000, Some(99_999), 500),
            Duration::from_millis(500)
        );
        assert_eq!(sleep_for(0, None, 0), Duration::from_millis(1));
    }

    #[test]
    fn last_error_names_the_cause_then_stderr() {
        assert_eq!(last_error(&Outcome::Exited(3), b""), "exit code 3");
        assert_eq!(
            last_error(&Outcome::Exited(1), b"oops\n"),
            "exit code 1: oops"
        );
        assert!(last_error(&Outcome::TimedOut { after_ms: 1500 }, b"")
            .starts_with("timed out after 1.5"));
        let long = "x".repeat(2000);
        let e = last_error(&Outcome::Signaled(9), long.as_bytes());
        assert!(e.starts_with("killed by signal 9: …"));
        assert!(e.chars().count() < 560);
    }
}
