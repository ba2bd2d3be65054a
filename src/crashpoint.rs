//! Crash-point injection for tests: with `QUEUECTL_CRASH_AT=<point>` (or `<point>@<n>`, the
//! n-th pass) the process kills itself with SIGKILL when it passes that point, exactly as a
//! `kill -9` or a power cut would stop it there. Unset, a check costs one atomic load.
//!
//! Points: `open` (while the store writes its snapshot during open), `after-reserve` (a job
//! was reserved, nothing flushed), `before-flush`, `mid-apply` (a spool request applied, not yet
//! flushed or answered), `enqueue-chunk` (a part of a bulk enqueue committed, or staged),
//! `enqueue-publish` (a bulk enqueue published, part of its jobs moved into the queue), `export` (the
//! SQLite file written under its temporary name, not yet renamed).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub const ENV: &str = "QUEUECTL_CRASH_AT";

struct Armed {
    point: String,
    nth: u64,
    passes: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

fn armed() -> Option<&'static Armed> {
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok().filter(|s| !s.is_empty())?;
            let (point, nth) = match spec.split_once('@') {
                Some((p, n)) => (p.to_owned(), n.parse().ok().filter(|n| *n > 0)?),
                None => (spec, 1),
            };
            Some(Armed {
                point,
                nth,
                passes: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Whether `point` is the armed one.
pub fn is_armed(point: &str) -> bool {
    armed().is_some_and(|a| a.point == point)
}

/// Passes `point`: dies here if it is armed (and this is the n-th pass).
pub fn hit(point: &str) {
    if let Some(a) = armed().filter(|a| a.point == point) {
        if a.passes.fetch_add(1, Ordering::SeqCst) + 1 == a.nth {
            crash(point);
        }
    }
}

fn crash(point: &str) -> ! {
    eprintln!("queuectl: crash point {point}");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

/// The `open` point: when armed, dies as soon as a snapshot temporary file (`*.generating`)
/// appears in the store directory `dir`, i.e. while the store is writing it. Call before
/// opening the store.
pub fn watch_open(dir: &Path) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    if !is_armed("open") {
        return;
    }
    let Ok(inotify) = Inotify::init(InitFlags::IN_CLOEXEC) else {
        return;
    };
    if inotify.add_watch(dir, AddWatchFlags::IN_CREATE).is_err() {
        return;
    }
    std::thread::spawn(move || loop {
        let Ok(events) = inotify.read_events() else {
            return;
        };
        if events.iter().any(|e| {
            e.name
                .as_ref()
                .is_some_and(|n| n.as_encoded_bytes().ends_with(b".generating"))
        }) {
            crash("open");
        }
    });
}
