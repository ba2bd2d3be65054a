//! Self-fencing of a worker whose queue is shared with other hosts (PostgreSQL): the running
//! job is killed as soon as its supervisor has not renewed the leases for too long, whatever
//! became of the supervisor (stopped, hung, cut off from the database), so that a job is never
//! still running here once another host may have taken it over.
//!
//! The supervisor sets the modification time of a lease file to the time it sent each
//! successful renewal; the worker's watchdog kills the running job's process group once that
//! time is older than the fence interval (two thirds of a lease). Both read the same host's
//! clock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread;
use std::time::{Duration, SystemTime};

use super::kill;

/// The environment naming the lease file, set by the supervisor for its workers.
pub const FILE_ENV: &str = "QUEUECTL_FENCE_FILE";
/// The environment giving the fence interval in milliseconds.
pub const MS_ENV: &str = "QUEUECTL_FENCE_MS";

/// How long without a renewal before a job is killed: two thirds of a lease of `lease_ms`,
/// leaving a third for the kill to happen before another host may take the job over.
pub fn fence_after(lease_ms: u64) -> Duration {
    Duration::from_millis(lease_ms.saturating_mul(2) / 3)
}

/// How often the watchdog looks.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// The process group of the job running now (0: none).
static RUNNING: AtomicI32 = AtomicI32::new(0);

/// Records the process group of the job that runs now (`None` once it ended).
pub fn set_running(pgid: Option<i32>) {
    RUNNING.store(pgid.unwrap_or(0), Ordering::SeqCst);
}

/// Starts the watchdog when the supervisor asked for one.
pub fn start_from_env() {
    let Some(file) = std::env::var_os(FILE_ENV).map(PathBuf::from) else {
        return;
    };
    let Some(ms) = std::env::var(MS_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let limit = Duration::from_millis(ms);
    let spawned = thread::Builder::new()
        .name("queuectl-fence".into())
        .spawn(move || watch(&file, limit));
    if let Err(e) = spawned {
        tracing::error!("cannot start the lease watchdog: {e}");
    }
}

fn watch(file: &std::path::Path, limit: Duration) {
    let mut killed = 0;
    loop {
        thread::sleep(CHECK_EVERY);
        let pgid = RUNNING.load(Ordering::SeqCst);
        if pgid == 0 || pgid == killed {
            continue;
        }
        let age = std::fs::metadata(file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        let stale = match age {
            Some(age) => age > limit,
            // No lease file, or one from the future (the clock went back): not renewed.
            None => true,
        };
        if stale {
            tracing::error!(
                "worker {}: the supervisor has not renewed its leases for over {}ms: killing \
                 the running job (process group {pgid}) before another host takes it over",
                std::process::id(),
                limit.as_millis()
            );
            if let Err(e) = kill::kill_job_group(pgid) {
                tracing::warn!("cannot kill process group {pgid}: {e}");
            }
            killed = pgid;
        }
    }
}
