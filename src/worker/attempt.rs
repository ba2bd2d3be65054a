//! The attempt record: before a job's command may run, its worker writes which job runs in
//! which process group, and when that group's leader started, to a small file of its own
//! (`attempts/<worker pid>` in the data directory). A plain `write(2)` is in the kernel's page
//! cache once it returns, so it survives a `kill -9` of every queuectl process (the store's
//! unflushed reservation does not). Whoever takes the store over next runs
//! [`kill_recorded`] before anything else: each recorded group whose leader still has the
//! recorded start time is killed, so an orphaned attempt can never run beside a new one, and a
//! reused pid is never mistaken for it.
//!
//! Processes of the job that leave its group (`setsid` daemons) are caught by the token each
//! attempt puts in its processes' environment ([`TOKEN_ENV`], inherited by every descendant
//! unless one clears its environment): the worker, a child subreaper, kills them when the
//! attempt ends; after a crash of the worker too, the next owner finds them in `/proc` (this
//! user's processes whose environment holds the token of a recorded attempt and that started
//! after it) and kills them.
//!
//! The record is one fixed-size `pwrite` at offset 0 (`<pgid> <start time> <token> <job id>`,
//! padded with spaces); an all-blank record means no attempt runs.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::Signal;

use super::kill;
use crate::model::MAX_ID_LEN;

/// Bytes of one record: two numbers, the token, the longest id, separators and a newline.
const RECORD_BYTES: usize = MAX_ID_LEN + 96;

/// The environment variable holding an attempt's token (internal: set by queuectl in every
/// job's environment, not meant for the job).
pub const TOKEN_ENV: &str = "QUEUECTL_ATTEMPT";

/// This worker process's record file, once [`install`]ed.
static RECORD: OnceLock<Mutex<Record>> = OnceLock::new();

struct Record {
    file: File,
    path: PathBuf,
}

/// Creates this worker's record file in `dir` (mode 0600, never through a link) and makes
/// this process the reaper of its jobs' orphans. Only worker processes call it.
pub fn install(dir: &Path) -> io::Result<()> {
    kill::become_subreaper()?;
    let path = dir.join(std::process::id().to_string());
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)?;
    // Written whole now, so that recording an attempt overwrites what is there and never
    // needs new space on a full disk.
    file.write_all_at(&[b' '; RECORD_BYTES], 0)?;
    let _ = RECORD.set(Mutex::new(Record { file, path }));
    Ok(())
}

fn with_record<T>(f: impl FnOnce(&Record) -> io::Result<T>) -> io::Result<Option<T>> {
    match RECORD.get() {
        None => Ok(None),
        Some(m) => f(&super::lock(m)).map(Some),
    }
}

fn encode(pgid: i32, start: u64, token: &str, job_id: &str) -> Vec<u8> {
    let mut rec = format!("{pgid} {start} {token} {job_id}").into_bytes();
    rec.resize(RECORD_BYTES - 1, b' ');
    rec.push(b'\n');
    rec
}

/// Records the attempt about to run (a no-op outside a worker process). `token` has no
/// spaces.
pub fn record(job_id: &str, pgid: i32, start: u64, token: &str) -> io::Result<()> {
    with_record(|r| r.file.write_all_at(&encode(pgid, start, token, job_id), 0)).map(drop)
}

/// Ends the attempt: kills what is left of the job outside its group (daemons it started),
/// then blanks the record. A no-op outside a worker process.
pub fn end(pgid: i32) {
    let result = with_record(|r| {
        let killed = kill::kill_descendants(pgid);
        if killed > 0 {
            tracing::info!("killed {killed} processes the job (group {pgid}) left behind");
        }
        r.file.write_all_at(&[b' '; RECORD_BYTES], 0)
    });
    if let Err(e) = result {
        tracing::warn!("could not clear the attempt record: {e}");
    }
}

/// Removes this worker's record file (when the worker exits).
pub fn remove() {
    let _ = with_record(|r| fs::remove_file(&r.path));
}

/// A recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub pgid: i32,
    pub start: u64,
    pub token: String,
    pub job_id: String,
}

fn parse(bytes: &[u8]) -> Option<Recorded> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let mut parts = text.splitn(4, ' ');
    let pgid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let third = parts.next()?.to_owned();
    // A record of an older queuectl has no token: `<pgid> <start time> <job id>`.
    let (token, job_id) = match parts.next() {
        Some(id) => (third, id.to_owned()),
        None => (String::new(), third),
    };
    Some(Recorded {
        pgid,
        start,
        token,
        job_id,
    })
}

/// For a new owner of the store, before anything else: kills every recorded attempt whose
/// group leader still runs with the recorded start time, then every process of this user that
/// carries a recorded attempt's token and started after it (what left the group), and removes
/// the records of workers that are gone. Returns the attempts whose group was killed.
pub fn kill_recorded(dir: &Path) -> Vec<Recorded> {
    let mut killed = Vec::new();
    let mut recorded = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return killed;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(worker) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let bytes = match read_record(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot read the attempt record {}: {e}", path.display());
                continue;
            }
        };
        if let Some(rec) = parse(&bytes) {
            if rec.pgid > 1 && kill::start_time(rec.pgid) == Some(rec.start) {
                match kill::kill_job_group(rec.pgid) {
                    Ok(()) => {
                        wait_stopped(rec.pgid);
                        killed.push(rec.clone())
                    }
                    Err(e) => tracing::warn!(
                        "could not kill process group {} of job {}: {e}",
                        rec.pgid,
                        rec.job_id
                    ),
                }
            }
            recorded.push(rec);
        }
        if !kill::process_runs(worker) {
            let _ = fs::remove_file(&path);
        }
    }
    recorded.retain(|r| !r.token.is_empty());
    if !recorded.is_empty() {
        for (rec, n) in kill_marked(&recorded) {
            tracing::warn!(
                "killed {n} processes job {} left outside its process group (attempt {})",
                rec.job_id,
                rec.token
            );
        }
    }
    killed
}

/// Kills (SIGKILL) this user's processes whose environment holds the token of one of
/// `attempts` and that started no earlier than it, round after round (one may fork while
/// another is killed). Returns how many were killed for each attempt that had any.
fn kill_marked(attempts: &[Recorded]) -> Vec<(&Recorded, usize)> {
    use std::os::unix::fs::MetadataExt;
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let uid = crate::datadir::euid();
    let marks: Vec<Vec<u8>> = attempts
        .iter()
        .map(|a| format!("{TOKEN_ENV}={}", a.token).into_bytes())
        .collect();
    let mut counts = vec![0usize; attempts.len()];
    let mut killed = std::collections::HashSet::new();
    // A bound on the rounds, against processes that fork as fast as they are killed.
    for _ in 0..20 {
        let mut found = false;
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == me || killed.contains(&pid) || !entry.metadata().is_ok_and(|m| m.uid() == uid)
            {
                continue;
            }
            // Unreadable (gone, or not ours after all): not one of ours.
            let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let Some(i) = environ
                .split(|b| *b == 0)
                .find_map(|var| marks.iter().position(|m| m.as_slice() == var))
            else {
                continue;
            };
            if kill::start_time(pid).is_some_and(|t| t >= attempts[i].start)
                && kill::signal_process(pid.unsigned_abs(), Signal::SIGKILL).is_ok()
            {
                killed.insert(pid);
                counts[i] += 1;
                found = true;
            }
        }
        if !found {
            break;
        }
    }
    attempts
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Waits (at most 5 s) until the killed leader no longer runs: SIGKILL takes effect when the
/// process next runs, which on a busy machine is not at once.
fn wait_stopped(pgid: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while u32::try_from(pgid).is_ok_and(kill::process_runs) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Reads a record file: a regular file of ours, never through a link, at most one record.
fn read_record(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not a regular file of this user's",
        ));
    }
    let mut bytes = Vec::with_capacity(RECORD_BYTES);
    file.take(RECORD_BYTES as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_blank_means_none() {
        let rec = encode(1234, 99, "01TOKEN", "job-1 with spaces");
        assert_eq!(rec.len(), RECORD_BYTES);
        assert_eq!(
            parse(&rec),
            Some(Recorded {
                pgid: 1234,
                start: 99,
                token: "01TOKEN".into(),
                job_id: "job-1 with spaces".into()
            })
        );
        assert_eq!(parse(&[b' '; RECORD_BYTES]), None);
        // An older queuectl's record, without a token.
        assert_eq!(
            parse(b"12 34 job"),
            Some(Recorded {
                pgid: 12,
                start: 34,
                token: String::new(),
                job_id: "job".into()
            })
        );
        assert_eq!(parse(b"garbage"), None);
        let long = "x".repeat(MAX_ID_LEN);
        assert_eq!(
            parse(&encode(
                i32::MAX,
                u64::MAX,
                &ulid::Ulid::generate().to_string(),
                &long
            ))
            .unwrap()
            .job_id,
            long
        );
    }

    #[test]
    fn only_a_leader_with_the_recorded_start_time_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        // A record naming a live process with the wrong start time (a reused pid): untouched.
        let me = i32::try_from(std::process::id()).unwrap();
        let start = kill::start_time(me).unwrap();
        fs::write(dir.path().join("1"), encode(me, start + 1, "t1", "a")).unwrap();
        assert!(kill_recorded(dir.path()).is_empty());
        // A record of a process that is gone: nothing killed, and the record of a gone worker
        // (pid 1 is init, which runs; use a pid that cannot exist) is removed.
        fs::write(
            dir.path().join("2147483647"),
            encode(2147483646, 5, "t2", "b"),
        )
        .unwrap();
        assert!(kill_recorded(dir.path()).is_empty());
        assert!(!dir.path().join("2147483647").exists());
        assert!(
            dir.path().join("1").exists(),
            "a live worker keeps its record"
        );
    }
}
