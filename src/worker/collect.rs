//! Collecting a running job's output: a pool of collector threads, each reading one job's
//! stdout and stderr with `poll(2)` until they close or the shell is gone, keeping the last
//! [`TAIL_BYTES`] of each, and killing the job's group at its deadline.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::kill::Target;
use super::{lock, millis};

/// Bytes kept from the end of each of a job's stdout and stderr.
pub const TAIL_BYTES: usize = 64 * 1024;

/// Bytes of each stream written to the live file that `queuectl logs` reads while a job runs;
/// past this the live file stops growing (the stored tail still gets the end of the output).
pub const LIVE_BYTES: u64 = 16 * 1024 * 1024;

/// Bytes read from an output pipe at a time (a stack buffer).
const READ_CHUNK: usize = 16 * 1024;

/// After the shell exits, at most this many reads per pipe collect what is still buffered, so
/// that an escaped process writing without pause cannot keep us reading.
const MAX_DRAIN_READS: usize = 64;

/// Stack of a collector thread.
const COLLECTOR_STACK: usize = 256 * 1024;

/// What a collector does for one job: read both pipes until they close and no deadline is
/// pending, or until told the shell is gone; kill the group at the deadline.
pub(super) struct Collect {
    pub(super) out: Capture,
    pub(super) err: Capture,
    /// Hangs up when [`Shell::wait`](super::command) has seen the shell exit.
    pub(super) stop: OwnedFd,
    pub(super) deadline: Option<Instant>,
    pub(super) started: Instant,
    pub(super) target: Arc<Target>,
    pub(super) reply: Arc<Handover<Collected>>,
}

/// What a collector hands back.
#[derive(Default)]
pub(super) struct Collected {
    pub(super) stdout: Vec<u8>,
    pub(super) stderr: Vec<u8>,
    /// Milliseconds from the spawn to the timeout kill, if there was one.
    pub(super) timed_out_after: Option<u64>,
}

impl Collect {
    fn run(mut self) -> Collected {
        let mut buf = [0u8; READ_CHUNK];
        let mut deadline = self.deadline;
        let mut timed_out_after = None;
        // Once both pipes are closed only a deadline is left to keep; without one the shell's
        // exit is Shell::wait's business alone.
        while self.out.is_open() || self.err.is_open() || deadline.is_some() {
            let wait = deadline.map_or(PollTimeout::NONE, poll_timeout_until);
            let fds = [self.out.fd(), self.err.fd(), Some(self.stop.as_fd())];
            match wait_readable(fds, wait) {
                Ok([out, err, stop]) => {
                    if out {
                        self.out.read_once(&mut buf);
                    }
                    if err {
                        self.err.read_once(&mut buf);
                    }
                    if stop {
                        break;
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    // Cannot happen with valid descriptors; never leave a job unsupervised.
                    tracing::warn!(error = %e, "poll failed; killing the job");
                    self.target.kill("poll failed");
                    break;
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                deadline = None;
                timed_out_after = Some(millis(self.started.elapsed()));
                self.target.kill("timed out");
            }
        }
        // Only what is already in the pipes: a process outside the group may hold them open.
        self.out.drain(&mut buf);
        self.err.drain(&mut buf);
        Collected {
            stdout: self.out.tail.into_vec(),
            stderr: self.err.tail.into_vec(),
            timed_out_after,
        }
    }
}

/// Collector threads with nothing to do, as the slots that hand them a job.
static IDLE_COLLECTORS: Mutex<Vec<Arc<Handover<Collect>>>> = Mutex::new(Vec::new());

/// Hands `work` to an idle collector thread, or to a new one.
pub(super) fn start_collector(work: Collect) -> io::Result<()> {
    let idle = lock(&IDLE_COLLECTORS).pop();
    if let Some(slot) = idle {
        slot.put(work);
        return Ok(());
    }
    let slot = Arc::new(Handover::default());
    slot.put(work);
    let mine = Arc::clone(&slot);
    thread::Builder::new()
        .name("queuectl-collect".into())
        .stack_size(COLLECTOR_STACK)
        .spawn(move || collector(mine))?;
    Ok(())
}

/// A pooled collector thread: one job at a time, forever.
fn collector(slot: Arc<Handover<Collect>>) {
    loop {
        let work = slot.take();
        let reply = Arc::clone(&work.reply);
        // `run` does not panic; if it ever did, the job still gets an answer.
        let collected = panic::catch_unwind(AssertUnwindSafe(|| work.run())).unwrap_or_default();
        // Back to the pool before replying, so a caller running jobs one after the other finds
        // this thread idle; work handed over early just waits in the slot.
        lock(&IDLE_COLLECTORS).push(Arc::clone(&slot));
        reply.put(collected);
    }
}

/// A one-value hand-over between two threads. A mutex and a condition variable rather than a
/// channel: crossbeam's blocking receive yields the CPU a few times before sleeping, which on a
/// busy machine costs context switches on every job.
pub(super) struct Handover<T> {
    value: Mutex<Option<T>>,
    filled: Condvar,
}

impl<T> Default for Handover<T> {
    fn default() -> Self {
        Handover {
            value: Mutex::new(None),
            filled: Condvar::new(),
        }
    }
}

impl<T> Handover<T> {
    pub(super) fn put(&self, value: T) {
        *lock(&self.value) = Some(value);
        self.filled.notify_one();
    }

    pub(super) fn take(&self) -> T {
        let mut value = lock(&self.value);
        loop {
            if let Some(v) = value.take() {
                return v;
            }
            value = self
                .filled
                .wait(value)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Waits until one of the present descriptors is readable or hung up, or the timeout passes.
fn wait_readable(fds: [Option<BorrowedFd<'_>>; 3], timeout: PollTimeout) -> nix::Result<[bool; 3]> {
    let Some(first) = fds.iter().flatten().next().copied() else {
        return Ok([false; 3]);
    };
    let mut polled: [PollFd<'_>; 3] =
        std::array::from_fn(|_| PollFd::new(first, PollFlags::POLLIN));
    let mut slot_of = [0usize; 3];
    let mut n = 0;
    for (slot, fd) in fds.iter().enumerate() {
        if let Some(fd) = fd {
            polled[n] = PollFd::new(*fd, PollFlags::POLLIN);
            slot_of[n] = slot;
            n += 1;
        }
    }
    poll(&mut polled[..n], timeout)?;
    let mut ready = [false; 3];
    for (pfd, &slot) in polled[..n].iter().zip(&slot_of) {
        // Unknown event bits: let the read find out.
        ready[slot] = pfd.any().unwrap_or(true);
    }
    Ok(ready)
}

/// Poll timeout until `deadline`, rounded up so that we never wake before it.
fn poll_timeout_until(deadline: Instant) -> PollTimeout {
    let left = deadline.saturating_duration_since(Instant::now());
    PollTimeout::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(PollTimeout::MAX)
}

/// One output pipe of the shell (non-blocking) and the tail of what came through it.
pub(super) struct Capture {
    /// `None` once the pipe reached end of file (or failed).
    pipe: Option<File>,
    tail: Tail,
    /// Where what arrives is also written as it arrives, for `queuectl logs --follow`.
    live: Option<Live>,
}

/// How often (in bytes written) a live copy checks that the disk has room.
const ROOM_CHECK_BYTES: u64 = 64 * 1024;

/// A live output file, created when the first output arrives (a silent job costs nothing).
pub(super) struct Live {
    path: std::path::PathBuf,
    file: Option<File>,
    /// Bytes written so far (at most [`LIVE_BYTES`]).
    written: u64,
}

impl Live {
    pub(super) fn new(path: &std::path::Path) -> Live {
        Live {
            path: path.to_path_buf(),
            file: None,
            written: 0,
        }
    }
}

/// Creates (mode 0600, never through a symbolic link) a live output file.
fn create_live(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits() | OFlag::O_CLOEXEC.bits())
        .open(path)
}

impl Capture {
    pub(super) fn new(pipe: Option<OwnedFd>, live: Option<Live>) -> io::Result<Capture> {
        let pipe = pipe.map(File::from);
        if let Some(file) = &pipe {
            fcntl(file, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        }
        Ok(Capture {
            pipe,
            tail: Tail::default(),
            live,
        })
    }

    /// Appends to the live file, up to [`LIVE_BYTES`]; a failed write ends the live copy.
    fn write_live(&mut self, bytes: &[u8]) {
        let Some(live) = &mut self.live else {
            return;
        };
        let room = usize::try_from(LIVE_BYTES.saturating_sub(live.written)).unwrap_or(usize::MAX);
        let part = &bytes[..bytes.len().min(room)];
        if part.is_empty() {
            return;
        }
        if live.file.is_none() {
            match create_live(&live.path) {
                Ok(f) => live.file = Some(f),
                Err(e) => {
                    tracing::warn!(path = %live.path.display(), error = %e, "cannot create a live output file");
                    self.live = None;
                    return;
                }
            }
        }
        // On a nearly full disk the space is for the store and for answering requests: the
        // stored tail keeps the output. (Checked at each 64 KiB.)
        let check = live.written == 0
            || live.written % ROOM_CHECK_BYTES + part.len() as u64 >= ROOM_CHECK_BYTES;
        if check
            && crate::datadir::free_space(&live.path)
                .is_some_and(|room| room < crate::datadir::LOW_ROOM)
        {
            tracing::info!("the disk is nearly full: no more live copy of a job's output");
            self.live = None;
            return;
        }
        let Some(file) = live.file.as_mut() else {
            return;
        };
        match std::io::Write::write_all(file, part) {
            Ok(()) => live.written += part.len() as u64,
            Err(e) => {
                tracing::warn!(error = %e, "could not write a job's live output");
                self.live = None;
            }
        }
    }

    fn is_open(&self) -> bool {
        self.pipe.is_some()
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|f| f.as_fd())
    }

    /// Reads once; returns whether it is worth reading again right away.
    fn read_once(&mut self, buf: &mut [u8]) -> bool {
        let Some(pipe) = &mut self.pipe else {
            return false;
        };
        match pipe.read(buf) {
            Ok(0) => {
                self.pipe = None;
                false
            }
            Ok(n) => {
                self.tail.push(&buf[..n]);
                self.write_live(&buf[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not read a job's output");
                self.pipe = None;
                false
            }
        }
    }

    /// Reads what is already buffered in the pipe, without waiting for more.
    fn drain(&mut self, buf: &mut [u8]) {
        for _ in 0..MAX_DRAIN_READS {
            if !self.read_once(buf) {
                break;
            }
        }
    }
}

/// The last [`TAIL_BYTES`] of a byte stream, and how much came before them.
#[derive(Default)]
struct Tail(VecDeque<u8>, u64);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        let cut = bytes.len().saturating_sub(TAIL_BYTES);
        let bytes = &bytes[cut..];
        let excess = (self.0.len() + bytes.len()).saturating_sub(TAIL_BYTES);
        self.0.drain(..excess);
        self.0.extend(bytes);
        self.1 += (cut + excess) as u64;
    }

    /// The kept bytes, after a line saying how many were dropped (`[… 135,168 bytes dropped
    /// …]`) if any were.
    fn into_vec(self) -> Vec<u8> {
        if self.1 == 0 {
            return self.0.into();
        }
        let mut v = format!("[… {} bytes dropped …]\n", thousands(self.1)).into_bytes();
        v.extend(self.0);
        v
    }
}

/// `135168` as `135,168`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(&[1; 10]);
        t.push(&vec![2; TAIL_BYTES - 5]);
        t.push(&[3; 2]);
        let v = t.into_vec();
        let marker = b"[\xe2\x80\xa6 7 bytes dropped \xe2\x80\xa6]\n";
        assert_eq!(
            &v[..marker.len()],
            marker,
            "{}",
            String::from_utf8_lossy(&v[..40])
        );
        let v = &v[marker.len()..];
        assert_eq!(v.len(), TAIL_BYTES);
        assert_eq!(&v[..3], &[1, 1, 1]);
        assert_eq!(&v[TAIL_BYTES - 3..], &[2, 3, 3]);
        let mut t = Tail::default();
        let big: Vec<u8> = (0..TAIL_BYTES * 2).map(|i| i as u8).collect();
        t.push(b"old");
        t.push(&big);
        let v = t.into_vec();
        assert!(v.starts_with("[… 65,539 bytes dropped …]\n".as_bytes()));
        assert!(v.ends_with(&big[TAIL_BYTES..]));
        let mut t = Tail::default();
        t.push(b"small");
        assert_eq!(t.into_vec(), b"small", "nothing dropped, no marker");
        assert_eq!(thousands(135_168), "135,168");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
    }
}
