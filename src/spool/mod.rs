//! The request spool: how CLI invocations talk to a running supervisor through the file system.
//!
//! The supervisor is the only process that may open the store, so while it runs every other
//! invocation hands its write or query to it as a *request file* and waits for a *reply file*.
//! This module is only the file mechanics; what a body means is the business of the protocol.
//!
//! # Layout
//!
//! ```text
//! <data_dir>/spool/            0700
//!     tmp/                     0700  requests being written: <id>.req
//!     new/                     0700  requests submitted and not yet finished: <id>.req
//!     reply/                   0700  <id>.fifo (the client's doorbell), <id>.tmp, <id>.reply
//!     rejected/                0700  requests that could not be answered: <name>, <id>.reason
//!     bulk/                    0700  <id>.jobs: the jobs of a bulk enqueue (any size), written
//!                                    and fsynced by the client before it submits request <id>
//!     wake                     0600  FIFO: the supervisor's doorbell
//! ```
//!
//! Every `<id>` is a ULID in its canonical form (26 characters of upper-case Crockford base32),
//! so names cannot traverse paths and sort in submission order.
//!
//! # Life of a request
//!
//! 1. The client takes an id ([`Spool::new_request_id`]) and creates its doorbell
//!    `reply/<id>.fifo`, which it holds open read-write ([`Spool::reply_waiter`]) so that its
//!    reads never see end of file and the supervisor's non-blocking open for writing succeeds.
//! 2. It writes `tmp/<id>.req` (created exclusively, mode 0600), renames it to
//!    `new/<id>.req` and writes one byte to `wake` ([`Spool::submit_awaited`]; [`Spool::submit`]
//!    also fsyncs the file before the rename and `new/` after it).
//! 3. The supervisor's listener thread ([`Spool::listen`]) reads the byte(s) and sends one
//!    message on a channel; the supervisor lists `new/` ([`Spool::pending`]), reads each request
//!    ([`Spool::read`]), applies it, writes `reply/<id>.tmp`, renames it to `reply/<id>.reply`
//!    and rings the client's doorbell ([`Spool::reply`]); once the effect is flushed it removes
//!    `new/<id>.req` ([`Spool::finish`]). A request it cannot answer is moved to `rejected/`
//!    with a reason ([`Spool::reject`]).
//! 4. The client, waiting in poll(2) on its doorbell ([`ReplyWaiter::wait`]), reads the reply;
//!    dropping the [`ReplyWaiter`] removes its doorbell and reply.
//!
//! # Invariants
//!
//! - A request is never lost once something was promised about it. [`Spool::submit`] makes it
//!   durable before it is visible (its content is fsynced in `tmp/` before the rename makes it
//!   appear in `new/`, and `new/` is fsynced before it returns). [`Spool::submit_awaited`],
//!   for a client that waits for the reply, skips both fsyncs: the reply is the promise, and
//!   it is sent only after the effect is flushed; a client that gives up waiting calls
//!   [`Spool::make_durable`] before it says the request is queued. A request is only ever
//!   visible whole (written in `tmp/`, then renamed). It stays in `new/` until the supervisor
//!   has applied it and flushed the effect. [`Spool::finish`] does not fsync, so after a crash
//!   a finished request may show up again (or, if it was never fsynced, show up empty and be
//!   set aside): applying a request must be idempotent by its id.
//! - No wake-up is lost: a client rings `wake` only after the rename, and the supervisor lists
//!   `new/` only after reading the byte, so each listing sees every request whose byte it
//!   consumed. The supervisor must start [`Spool::listen`] before its first listing. Likewise
//!   the reply is renamed into place before the client's doorbell rings, and
//!   [`ReplyWaiter::wait`] looks for the file before and after each wait on the doorbell.
//! - A request or reply is only read from a regular file owned by this process's effective uid,
//!   opened without following symbolic links and without blocking (a FIFO planted in its place
//!   cannot hang the reader), and never when larger than [`MAX_REQUEST_BYTES`]. Symbolic links
//!   are moved aside as links, never followed.
//! - Only names of the form `<ULID>.req` in `new/` are ever answered; anything else there is
//!   moved to `rejected/`, except names starting with `.`, which are left alone.
//! - Nothing sleeps or polls on a timer: both sides block in read(2) or poll(2) on a FIFO.
//! - A lost reply costs only a client time-out, so replies are not fsynced.

pub mod request;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Sender, TrySendError};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

/// The largest request or reply body accepted, in bytes.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024 * 1024;

/// How long an abandoned bulk job file stays in `bulk/` at least.
const BULK_FILE_GRACE: Duration = Duration::from_secs(3600);

/// Length of a ULID in its canonical text form.
const ID_LEN: usize = 26;
/// Crockford's base32 alphabet, upper case (no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// How much of the wake FIFO one read drains.
const WAKE_READ_BYTES: usize = 4096;
/// How often the listener checks that `wake` is still there when nothing rings it.
const WAKE_CHECK_MS: u16 = 1000;
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Errors of the spool. Every variant says which path was concerned.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A system call failed; `action` says what was being done.
    #[error("cannot {action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error(
        "invalid request id {id:?}: expected a ULID (26 characters of upper-case Crockford base32)"
    )]
    InvalidId { id: String },
    #[error("refusing {}: it is a symbolic link", path.display())]
    Symlink { path: PathBuf },
    #[error("refusing {}: it is a {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("refusing {}: it is owned by uid {uid}, not by this process's effective uid {euid}", path.display())]
    WrongOwner { path: PathBuf, uid: u32, euid: u32 },
    #[error("refusing {}: {len} bytes is over the limit of {MAX_REQUEST_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf, len: u64 },
    /// Part of the spool's own layout has the wrong type (e.g. `wake` is not a FIFO).
    #[error("{} is a {found}, expected a {expected}", path.display())]
    WrongType {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
}

impl SpoolError {
    /// Whether this is a failed system call that found no such file (e.g. a request that has
    /// already been finished or set aside).
    pub fn is_not_found(&self) -> bool {
        matches!(self, SpoolError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }

    /// Whether this is a failed system call that found the disk full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SpoolError::Io { error, .. } if has_errno(error, Errno::ENOSPC))
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |error| SpoolError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// Whether `id` is a canonical ULID string: 26 characters of upper-case Crockford base32 whose
/// value fits in 128 bits. Such a string is safe as a file name component.
pub fn is_request_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == ID_LEN
        && (b'0'..=b'7').contains(&bytes[0])
        && bytes.iter().all(|b| CROCKFORD.contains(b))
}

fn check_id(id: &str) -> Result<(), SpoolError> {
    if is_request_id(id) {
        Ok(())
    } else {
        Err(SpoolError::InvalidId { id: id.to_owned() })
    }
}

/// A spool file must belong to the user this process runs as.
fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<(), SpoolError> {
    let euid = crate::datadir::euid();
    if meta.uid() != euid {
        return Err(SpoolError::WrongOwner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            euid,
        });
    }
    Ok(())
}

fn has_errno(error: &io::Error, errno: Errno) -> bool {
    error.raw_os_error() == Some(errno as i32)
}

/// Opens `path` read-only without following a symbolic link or blocking, checks on the opened
/// descriptor that it is a regular file owned by us and within [`MAX_REQUEST_BYTES`], and reads
/// it all.
fn read_checked(path: &Path) -> Result<Vec<u8>, SpoolError> {
    let file = open_checked(path, Some(MAX_REQUEST_BYTES))?;
    let mut body = Vec::with_capacity(file.metadata().map_or(0, |m| m.len() as usize));
    // The file may grow after fstat; never read more than one byte past the limit.
    (&file)
        .take(MAX_REQUEST_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(io_err("read", path))?;
    let len = body.len() as u64;
    if len > MAX_REQUEST_BYTES {
        return Err(SpoolError::TooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(body)
}

/// Opens `path` read-only without following a symbolic link or blocking, and checks on the
/// opened descriptor that it is a regular file owned by us, within `limit` bytes if given.
fn open_checked(path: &Path, limit: Option<u64>) -> Result<File, SpoolError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
    {
        Ok(file) => file,
        Err(error) if has_errno(&error, Errno::ELOOP) => {
            return Err(SpoolError::Symlink {
                path: path.to_path_buf(),
            })
        }
        Err(error) => {
            // A socket cannot be opened at all (ENXIO): name what is there when it is not a file.
            if let Ok(meta) = fs::symlink_metadata(path) {
                if !meta.file_type().is_file() {
                    return Err(SpoolError::NotRegular {
                        path: path.to_path_buf(),
                        kind: crate::datadir::kind_name(meta.file_type()),
                    });
                }
            }
            return Err(io_err("open", path)(error));
        }
    };
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if !meta.file_type().is_file() {
        return Err(SpoolError::NotRegular {
            path: path.to_path_buf(),
            kind: crate::datadir::kind_name(meta.file_type()),
        });
    }
    check_owner(path, &meta)?;
    if limit.is_some_and(|limit| meta.len() > limit) {
        return Err(SpoolError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    Ok(file)
}

/// Writes `body` to a new or truncated file at `path` (mode 0600, never through a symbolic
/// link). The file is removed again if writing fails.
fn write_file(path: &Path, body: &[u8], exclusive: bool, sync: bool) -> Result<(), SpoolError> {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .mode(FILE_MODE)
        .custom_flags(OFlag::O_NOFOLLOW.bits());
    if exclusive {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let mut file = options.open(path).map_err(io_err("create", path))?;
    let written = file
        .write_all(body)
        .map_err(io_err("write", path))
        .and_then(|()| {
            if sync {
                file.sync_all().map_err(io_err("fsync", path))
            } else {
                Ok(())
            }
        });
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Opens the FIFO at `path` write-only without blocking and writes one byte. Returns the error of
/// the open or the write; `ENXIO` from the open means nobody has the FIFO open for reading.
fn ring(path: &Path) -> io::Result<()> {
    let mut fifo = OpenOptions::new()
        .write(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW).bits())
        .open(path)?;
    if !fifo.metadata()?.file_type().is_fifo() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a fifo"));
    }
    fifo.write_all(&[1])
}

/// Creates a FIFO with mode 0600 at `path` unless one is already there.
fn ensure_fifo(path: &Path) -> Result<(), SpoolError> {
    let meta = match existing(path)? {
        Some(meta) => meta,
        None => {
            match nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) => return Err(io_err("create fifo", path)(errno.into())),
            }
            fs::symlink_metadata(path).map_err(io_err("stat", path))?
        }
    };
    check_owned(path, &meta, "fifo", |ft| ft.is_fifo(), FILE_MODE)
}

/// Creates a directory with mode 0700 at `path` unless one is already there.
fn ensure_dir(path: &Path) -> Result<(), SpoolError> {
    let meta = match existing(path)? {
        Some(meta) => meta,
        None => {
            match DirBuilder::new().mode(DIR_MODE).create(path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(io_err("create directory", path)(error)),
            }
            fs::symlink_metadata(path).map_err(io_err("stat", path))?
        }
    };
    check_owned(path, &meta, "directory", |ft| ft.is_dir(), DIR_MODE)
}

/// The entry's own metadata (a link is not followed), `None` if there is none: every command
/// opens the spool, which exists but the first time, so look before creating.
fn existing(path: &Path) -> Result<Option<fs::Metadata>, SpoolError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_err("stat", path)(error)),
    }
}

/// Checks that a piece of the spool's layout has the expected type and owner, and sets its mode
/// to `mode` if it differs (the umask, or an older version, may have left it wider).
fn check_owned(
    path: &Path,
    meta: &fs::Metadata,
    expected: &'static str,
    is_expected: impl Fn(fs::FileType) -> bool,
    mode: u32,
) -> Result<(), SpoolError> {
    if !is_expected(meta.file_type()) {
        return Err(SpoolError::WrongType {
            path: path.to_path_buf(),
            expected,
            found: crate::datadir::kind_name(meta.file_type()),
        });
    }
    check_owner(path, meta)?;
    if meta.mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io_err("set the mode of", path))?;
    }
    Ok(())
}

impl Spool {
    /// Whether the client that sent request `id` is gone (nobody waits on its reply).
    pub fn client_gone(&self, id: &str) -> bool {
        is_request_id(id) && !client_alive(&self.reply.join(format!("{id}.fifo")))
    }
}

/// Whether the client that owns `reply/<id>.fifo` is still there: somebody holds the FIFO open
/// for reading. Errors other than "no such file" and "no reader" count as alive (keep the files).
fn client_alive(fifo: &Path) -> bool {
    match OpenOptions::new()
        .write(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW).bits())
        .open(fifo)
    {
        Ok(file) => file
            .metadata()
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(true),
        Err(error) => !(error.kind() == io::ErrorKind::NotFound || has_errno(&error, Errno::ENXIO)),
    }
}

/// Generator of request ids, shared by the process so that ids taken in the same millisecond
/// still sort in the order they were taken.
static ID_GENERATOR: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());

/// The spool directory of one data directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    tmp: PathBuf,
    new: PathBuf,
    reply: PathBuf,
    rejected: PathBuf,
    bulk: PathBuf,
    wake: PathBuf,
}

/// A request found in `new/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    /// The request id (a ULID string).
    pub id: String,
    /// `new/<id>.req`. Informational: the spool always derives the path from `id` again.
    pub path: PathBuf,
}

/// The client's side of one reply: holds `reply/<id>.fifo` open and waits on it.
#[derive(Debug)]
pub struct ReplyWaiter {
    fifo: File,
    fifo_path: PathBuf,
    reply_path: PathBuf,
}

impl Spool {
    /// Creates (if missing) `<data_dir>/spool` with subdirectories `tmp/`, `new/`, `reply/`,
    /// `rejected/` (mode 0700) and the wake FIFO `<data_dir>/spool/wake` (mode 0600). Each must
    /// be of the right type and owned by this process's effective uid; modes are tightened.
    pub fn open(data_dir: &Path) -> Result<Spool, SpoolError> {
        let root = data_dir.join("spool");
        let spool = Spool {
            tmp: root.join("tmp"),
            new: root.join("new"),
            reply: root.join("reply"),
            rejected: root.join("rejected"),
            bulk: root.join("bulk"),
            wake: root.join("wake"),
            root,
        };
        ensure_dir(&spool.root)?;
        for dir in [
            &spool.tmp,
            &spool.new,
            &spool.reply,
            &spool.rejected,
            &spool.bulk,
        ] {
            ensure_dir(dir)?;
        }
        ensure_fifo(&spool.wake)?;
        Ok(spool)
    }

    /// `<data_dir>/spool`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh request id: a ULID string (so names sort in submission order; ids taken by one
    /// process are strictly increasing).
    pub fn new_request_id() -> String {
        let mut generator = ID_GENERATOR
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = match generator.generate() {
            Ok(id) => id,
            // 2^80 ids in one millisecond: move on to the next one.
            Err(overflow) => overflow.commit_overflow_increment(),
        };
        id.to_string()
    }

    fn request_path(&self, id: &str) -> PathBuf {
        self.new.join(format!("{id}.req"))
    }

    fn bulk_path(&self, id: &str) -> PathBuf {
        self.bulk.join(format!("{id}.jobs"))
    }

    /// Creates `bulk/<id>.jobs` (mode 0600, `O_EXCL`) for the client to write the jobs of a
    /// bulk enqueue into; it fsyncs the file ([`File::sync_all`]) before it submits request
    /// `<id>`. No size limit: the owner streams from it.
    pub fn create_bulk(&self, id: &str) -> Result<File, SpoolError> {
        check_id(id)?;
        let path = self.bulk_path(id);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(io_err("create", &path))
    }

    /// Opens `bulk/<id>.jobs` for reading, with the checks of [`read`](Spool::read) except the
    /// size limit.
    pub fn open_bulk(&self, id: &str) -> Result<File, SpoolError> {
        check_id(id)?;
        open_checked(&self.bulk_path(id), None)
    }

    /// Removes `bulk/<id>.jobs`; one already gone is fine.
    pub fn remove_bulk(&self, id: &str) -> Result<(), SpoolError> {
        check_id(id)?;
        let path = self.bulk_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_err("remove", &path)(error)),
        }
    }

    // ---- client side ----

    /// Before submitting: creates `reply/<id>.fifo` and opens it `O_RDWR|O_NONBLOCK`, so the
    /// reader never sees end of file and the supervisor's non-blocking open for writing always
    /// succeeds while the waiter lives.
    pub fn reply_waiter(&self, id: &str) -> Result<ReplyWaiter, SpoolError> {
        check_id(id)?;
        let fifo_path = self.reply.join(format!("{id}.fifo"));
        nix::unistd::mkfifo(&fifo_path, Mode::S_IRUSR | Mode::S_IWUSR)
            .map_err(|errno| io_err("create reply fifo", &fifo_path)(errno.into()))?;
        // From here on the waiter owns the FIFO: dropping it removes the FIFO.
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW).bits())
            .open(&fifo_path);
        let fifo = match opened {
            Ok(fifo) => fifo,
            Err(error) => {
                let _ = fs::remove_file(&fifo_path);
                return Err(io_err("open reply fifo", &fifo_path)(error));
            }
        };
        Ok(ReplyWaiter {
            fifo,
            reply_path: self.reply.join(format!("{id}.reply")),
            fifo_path,
        })
    }

    /// Writes `tmp/<id>.req` (mode 0600, `O_EXCL`), fsyncs it, renames it to `new/<id>.req`,
    /// fsyncs `new/`, then [`wake`](Spool::wake)s the supervisor. When this returns `Ok` the
    /// request is durable. A body over [`MAX_REQUEST_BYTES`] is refused (it would be).
    pub fn submit(&self, id: &str, body: &[u8]) -> Result<(), SpoolError> {
        self.submit_with(id, body, true)
    }

    /// Like [`submit`](Spool::submit) without either fsync: for a submitter that waits for the
    /// reply. The reply comes only after the owner has flushed the request's effect, so until
    /// then nothing was promised, and a process crash on either side leaves the file in the page
    /// cache for the next owner. Before promising anything without a reply (giving up
    /// waiting), call [`make_durable`](Spool::make_durable).
    pub fn submit_awaited(&self, id: &str, body: &[u8]) -> Result<(), SpoolError> {
        self.submit_with(id, body, false)
    }

    /// Makes a request submitted with [`submit_awaited`](Spool::submit_awaited) durable: fsyncs
    /// `new/<id>.req` and `new/`. `Ok(false)` when the request is no longer there (it was
    /// applied and its effect flushed, or set aside).
    pub fn make_durable(&self, id: &str) -> Result<bool, SpoolError> {
        check_id(id)?;
        let path = self.request_path(id);
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
            .open(&path)
        {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(io_err("open", &path)(error)),
        };
        file.sync_all().map_err(io_err("fsync", &path))?;
        fsync_dir(&self.new)?;
        Ok(true)
    }

    fn submit_with(&self, id: &str, body: &[u8], sync: bool) -> Result<(), SpoolError> {
        check_id(id)?;
        let name = format!("{id}.req");
        let tmp = self.tmp.join(&name);
        let len = body.len() as u64;
        if len > MAX_REQUEST_BYTES {
            return Err(SpoolError::TooLarge { path: tmp, len });
        }
        write_file(&tmp, body, true, sync)?;
        let new = self.new.join(&name);
        if let Err(error) = fs::rename(&tmp, &new) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("move request into place at", &new)(error));
        }
        if sync {
            fsync_dir(&self.new)?;
        }
        self.wake();
        Ok(())
    }

    /// Opens the wake FIFO `O_WRONLY|O_NONBLOCK` and writes one byte. `ENXIO` (no listener) and
    /// `EAGAIN` (FIFO full: the listener is already due to wake) are fine; other failures are
    /// logged, since a request already submitted is found by the supervisor's next listing.
    pub fn wake(&self) {
        match ring(&self.wake) {
            Ok(()) => {}
            Err(error)
                if has_errno(&error, Errno::ENXIO) || error.kind() == io::ErrorKind::WouldBlock => {
            }
            Err(error) => {
                tracing::warn!(path = %self.wake.display(), %error, "cannot wake the supervisor");
            }
        }
    }

    // ---- server side ----

    /// Spawns a thread that holds the wake FIFO open `O_RDWR` (so its reads block rather than
    /// see end of file) and sends `()` on `tx` for each read that returns bytes (up to 4096 bytes
    /// drained at once, one message). A full bounded channel already holds a wake-up, so that
    /// message is dropped. The thread ends when `tx` is disconnected, which it notices after the
    /// next wake-up: to stop it, drop the receiver and call [`wake`](Spool::wake).
    ///
    /// Once a second without a wake-up the thread also checks that `wake` is still the FIFO it
    /// listens on: if it was removed or replaced, it makes a new FIFO, listens on that one and
    /// sends a message (a request may have been submitted while nobody listened). (inotify
    /// would notice at once, but an inotify instance makes a killed process hold its files,
    /// the store's lock among them, for tens of milliseconds after it looks dead.)
    pub fn listen(&self, tx: Sender<()>) -> Result<JoinHandle<()>, SpoolError> {
        self.listen_with(tx, || ())
    }

    /// Like [`listen`](Spool::listen), sending `make()` instead of `()`: so the wake-up can go
    /// straight into a channel that carries other messages too, without a thread to relay it.
    pub fn listen_with<T: Send + 'static>(
        &self,
        tx: Sender<T>,
        make: fn() -> T,
    ) -> Result<JoinHandle<()>, SpoolError> {
        let path = self.wake.clone();
        let fifo = open_wake(&path)?;
        std::thread::Builder::new()
            .name("spool-wake".to_owned())
            .spawn(move || listen_loop(fifo, &path, &tx, make))
            .map_err(io_err("start the listener thread for", &self.wake))
    }

    /// The requests in `new/`: names `<id>.req` whose stem is a valid ULID, sorted by id.
    /// Anything else in `new/` is moved to `rejected/` (it cannot be answered), except names
    /// starting with `.`. The type of each entry is not checked here: [`read`](Spool::read)
    /// refuses what is not a regular file.
    pub fn pending(&self) -> Result<Vec<PendingRequest>, SpoolError> {
        let mut found = Vec::new();
        let entries = fs::read_dir(&self.new).map_err(io_err("list", &self.new))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.new))?;
            let name = entry.file_name();
            if name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".req"))
                .filter(|stem| is_request_id(stem));
            match id {
                Some(id) => found.push(PendingRequest {
                    id: id.to_owned(),
                    path: entry.path(),
                }),
                None => {
                    let from = entry.path();
                    let to = self.rejected.join(&name);
                    match fs::rename(&from, &to) {
                        Ok(()) => tracing::warn!(
                            path = %from.display(),
                            "set aside a file in the spool that is not named like a request"
                        ),
                        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                        Err(error) => tracing::warn!(
                            path = %from.display(),
                            %error,
                            "cannot set aside a file in the spool that is not named like a request"
                        ),
                    }
                }
            }
        }
        found.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    /// Reads a request body safely: opens `new/<id>.req` with
    /// `O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC` and checks the opened descriptor: it must be a
    /// regular file, owned by this process's effective uid and no larger than
    /// [`MAX_REQUEST_BYTES`]. Each refusal is its own variant ([`SpoolError::Symlink`],
    /// [`SpoolError::NotRegular`], [`SpoolError::WrongOwner`], [`SpoolError::TooLarge`]); the
    /// caller should [`reject`](Spool::reject) such a request.
    pub fn read(&self, req: &PendingRequest) -> Result<Vec<u8>, SpoolError> {
        check_id(&req.id)?;
        read_checked(&self.request_path(&req.id))
    }

    /// Moves `new/<id>.req` aside to `rejected/<id>.req` (a symbolic link is moved as a link,
    /// never followed) and writes `rejected/<id>.reason` with `reason`.
    pub fn reject(&self, req: &PendingRequest, reason: &str) -> Result<(), SpoolError> {
        check_id(&req.id)?;
        let from = self.request_path(&req.id);
        let to = self.rejected.join(format!("{}.req", req.id));
        fs::rename(&from, &to).map_err(io_err("move aside rejected request", &from))?;
        let reason_path = self.rejected.join(format!("{}.reason", req.id));
        let mut text = reason.to_owned();
        text.push('\n');
        write_file(&reason_path, text.as_bytes(), false, false)
    }

    /// Writes `reply/<id>.tmp`, renames it to `reply/<id>.reply` (not fsynced: a lost reply only
    /// means the client times out), then rings the client's doorbell `reply/<id>.fifo`. If the
    /// client is gone (no FIFO, or nobody holds it open) the reply file is removed again. A body
    /// over [`MAX_REQUEST_BYTES`] is refused (the client would refuse it).
    pub fn reply(&self, id: &str, body: &[u8]) -> Result<(), SpoolError> {
        check_id(id)?;
        let tmp = self.reply.join(format!("{id}.tmp"));
        let len = body.len() as u64;
        if len > MAX_REQUEST_BYTES {
            return Err(SpoolError::TooLarge { path: tmp, len });
        }
        write_file(&tmp, body, false, false)?;
        let reply = self.reply.join(format!("{id}.reply"));
        if let Err(error) = fs::rename(&tmp, &reply) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("move reply into place at", &reply)(error));
        }
        if let Err(error) = ring(&self.reply.join(format!("{id}.fifo"))) {
            if error.kind() == io::ErrorKind::NotFound || has_errno(&error, Errno::ENXIO) {
                let _ = fs::remove_file(&reply);
            }
            tracing::debug!(%id, %error, "cannot ring the client's reply fifo");
        }
        Ok(())
    }

    /// Removes `new/<id>.req`: the request has been applied and its effect flushed. A request
    /// that is already gone is fine.
    pub fn finish(&self, req: &PendingRequest) -> Result<(), SpoolError> {
        check_id(&req.id)?;
        let path = self.request_path(&req.id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_err("remove finished request", &path)(error)),
        }
    }

    /// Used by every new owner of the store: removes the files in `reply/` (FIFOs, replies,
    /// partial replies) and `tmp/` (a client died while submitting) last modified at least `age`
    /// ago whose client is gone (its FIFO is missing or nobody holds it open), and bulk job files
    /// untouched for an hour (or `age` if longer) whose client is gone and whose request is not
    /// waiting in `new/`. Returns how many were removed.
    pub fn remove_stale_replies(&self, age: Duration) -> Result<usize, SpoolError> {
        let now = SystemTime::now();
        let old_enough = |meta: &fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|mtime| now.duration_since(mtime).ok())
                .is_some_and(|elapsed| elapsed >= age)
        };
        let bulk_old_enough = |meta: &fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|mtime| now.duration_since(mtime).ok())
                .is_some_and(|elapsed| elapsed >= age.max(BULK_FILE_GRACE))
        };
        let mut removed = 0;
        // A request still being written in `tmp/` belongs to a client that holds its doorbell.
        for (dir, check_client) in [(&self.reply, true), (&self.tmp, true), (&self.bulk, true)] {
            let entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
            for entry in entries {
                let entry = entry.map_err(io_err("list", dir))?;
                let path = entry.path();
                // DirEntry::metadata does not follow symbolic links.
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(io_err("stat", &path)(error)),
                };
                if meta.is_dir() || !old_enough(&meta) {
                    continue;
                }
                // A bulk file is written before its client's doorbell exists, from input that
                // may pause: give it longer.
                if dir == &self.bulk && !bulk_old_enough(&meta) {
                    continue;
                }
                if check_client {
                    let name = entry.file_name();
                    let stem = name.to_str().and_then(|n| n.split('.').next());
                    if let Some(id) = stem.filter(|s| is_request_id(s)) {
                        if client_alive(&self.reply.join(format!("{id}.fifo"))) {
                            continue;
                        }
                        // The jobs of a bulk enqueue stay as long as its request does.
                        if dir == &self.bulk && self.request_path(id).exists() {
                            continue;
                        }
                    }
                }
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(io_err("remove stale file", &path)(error)),
                }
            }
        }
        Ok(removed)
    }
}

/// Opens the wake FIFO `O_RDWR` (so reads block rather than see end of file), checking its type.
fn open_wake(path: &Path) -> Result<File, SpoolError> {
    let fifo = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(io_err("open wake fifo", path))?;
    let meta = fifo.metadata().map_err(io_err("stat", path))?;
    if !meta.file_type().is_fifo() {
        return Err(SpoolError::WrongType {
            path: path.to_path_buf(),
            expected: "fifo",
            found: crate::datadir::kind_name(meta.file_type()),
        });
    }
    Ok(fifo)
}

/// Whether `path` is still the FIFO that `fifo` has open.
fn same_file(fifo: &File, path: &Path) -> bool {
    match (fifo.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn listen_loop<T>(mut fifo: File, path: &Path, tx: &Sender<T>, make: fn() -> T) {
    let mut buf = [0u8; WAKE_READ_BYTES];
    loop {
        let fifo_ready = {
            let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(WAKE_CHECK_MS)) {
                Ok(n) => n > 0,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    tracing::error!(path = %path.display(), %errno, "cannot wait on the wake fifo");
                    return;
                }
            }
        };
        if !fifo_ready {
            if !same_file(&fifo, path) {
                let reopened = ensure_fifo(path).and_then(|()| open_wake(path));
                match reopened {
                    Ok(new) => {
                        tracing::warn!(path = %path.display(), "the wake fifo was removed; made a new one");
                        fifo = new;
                        match tx.try_send(make()) {
                            Ok(()) | Err(TrySendError::Full(_)) => {}
                            Err(TrySendError::Disconnected(_)) => return,
                        }
                    }
                    Err(error) => {
                        tracing::error!(path = %path.display(), %error, "cannot make a new wake fifo")
                    }
                }
            }
            continue;
        }
        match (&fifo).read(&mut buf) {
            Ok(0) => {
                // Impossible while we hold a write end ourselves; do not spin if it happens.
                tracing::error!(path = %path.display(), "wake fifo reported end of file");
                return;
            }
            Ok(_) => match tx.try_send(make()) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return,
            },
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot read the wake fifo");
                return;
            }
        }
    }
}

/// Rounds up to whole milliseconds, so a short remainder does not turn into a busy loop.
fn poll_timeout(remaining: Option<Duration>) -> PollTimeout {
    match remaining {
        None => PollTimeout::NONE,
        Some(d) => {
            PollTimeout::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(PollTimeout::MAX)
        }
    }
}

impl ReplyWaiter {
    /// Waits up to `slice` for the reply: looks for `reply/<id>.reply` first, then waits in
    /// poll(2) on the FIFO for what is left of `slice`, drains it and looks again. `Ok(Some(body))`
    /// when the reply is there, `Ok(None)` when the slice has passed. The reply is read with the
    /// same checks as a request.
    pub fn wait(&self, slice: Duration) -> Result<Option<Vec<u8>>, SpoolError> {
        if let Some(body) = self.take()? {
            return Ok(Some(body));
        }
        let deadline = Instant::now().checked_add(slice);
        loop {
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let mut fds = [PollFd::new(self.fifo.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, poll_timeout(remaining)) {
                Ok(0) => return self.take(),
                Ok(_) => {
                    let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                    if revents.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
                        return Err(io_err("wait on reply fifo", &self.fifo_path)(
                            io::Error::other("poll reported an error condition"),
                        ));
                    }
                    self.drain()?;
                    if let Some(body) = self.take()? {
                        return Ok(Some(body));
                    }
                    if remaining == Some(Duration::ZERO) {
                        return Ok(None);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(errno) => {
                    return Err(io_err("wait on reply fifo", &self.fifo_path)(errno.into()))
                }
            }
        }
    }

    /// The reply body, if the reply file is there.
    fn take(&self) -> Result<Option<Vec<u8>>, SpoolError> {
        match read_checked(&self.reply_path) {
            Ok(body) => Ok(Some(body)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Empties the FIFO so the next poll blocks until the next ring.
    fn drain(&self) -> Result<(), SpoolError> {
        let mut buf = [0u8; 64];
        loop {
            match (&self.fifo).read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(io_err("read reply fifo", &self.fifo_path)(error)),
            }
        }
    }
}

impl Drop for ReplyWaiter {
    /// Removes `reply/<id>.fifo` (first, so a late reply sees the client gone and cleans up after
    /// itself) and `reply/<id>.reply`, ignoring errors.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.fifo_path);
        let _ = fs::remove_file(&self.reply_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, unbounded, Receiver};
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    const BOUND: Duration = Duration::from_secs(10);

    fn setup() -> (TempDir, Spool) {
        let dir = TempDir::new().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        (dir, spool)
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    /// Runs `f` on another thread and waits a bounded time for its result, so that a call that
    /// blocks fails the test instead of hanging it.
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(BOUND).expect("call blocked")
    }

    /// Stops a listener: disconnect, wake, and wait (bounded) for the thread to end.
    fn stop_listener(spool: &Spool, rx: Receiver<()>, handle: JoinHandle<()>) {
        drop(rx);
        spool.wake();
        within(move || handle.join().unwrap());
    }

    fn plant(spool: &Spool, name: &str) -> PathBuf {
        spool.new.join(name)
    }

    #[test]
    fn round_trip() {
        let (dir, spool) = setup();
        let root = dir.path().join("spool");
        for sub in ["", "tmp", "new", "reply", "rejected"] {
            assert_eq!(mode(&root.join(sub)), 0o700, "{sub}");
        }
        assert!(fs::symlink_metadata(root.join("wake"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(mode(&root.join("wake")), 0o600);

        let (tx, rx) = unbounded();
        let listener = spool.listen(tx).unwrap();
        let id = Spool::new_request_id();
        let waiter = spool.reply_waiter(&id).unwrap();
        spool.submit(&id, b"hello").unwrap();
        assert_eq!(mode(&root.join("new").join(format!("{id}.req"))), 0o600);
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);

        rx.recv_timeout(BOUND).unwrap();
        let pending = spool.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, id);
        assert_eq!(pending[0].path, root.join("new").join(format!("{id}.req")));
        assert_eq!(spool.read(&pending[0]).unwrap(), b"hello");
        spool.reply(&id, b"world").unwrap();
        assert_eq!(waiter.wait(BOUND).unwrap().unwrap(), b"world");
        spool.finish(&pending[0]).unwrap();
        assert!(spool.pending().unwrap().is_empty());
        assert!(!pending[0].path.exists());

        drop(waiter);
        assert_eq!(fs::read_dir(root.join("reply")).unwrap().count(), 0);
        stop_listener(&spool, rx, listener);
    }

    #[test]
    fn an_awaited_request_is_visible_whole_and_made_durable_on_demand() {
        let (_dir, spool) = setup();
        let (tx, rx) = unbounded();
        let listener = spool.listen(tx).unwrap();
        let id = Spool::new_request_id();
        let waiter = spool.reply_waiter(&id).unwrap();
        spool.submit_awaited(&id, b"hello").unwrap();
        rx.recv_timeout(BOUND).unwrap();
        assert!(fs::read_dir(&spool.tmp).unwrap().next().is_none());
        let pending = spool.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(spool.read(&pending[0]).unwrap(), b"hello");
        assert!(spool.make_durable(&id).unwrap());
        spool.reply(&id, b"done").unwrap();
        assert_eq!(waiter.wait(BOUND).unwrap().unwrap(), b"done");
        spool.finish(&pending[0]).unwrap();
        // Applied and finished: nothing is left to make durable.
        assert!(!spool.make_durable(&id).unwrap());
        assert!(matches!(
            spool.make_durable("../x"),
            Err(SpoolError::InvalidId { .. })
        ));
        stop_listener(&spool, rx, listener);
    }

    #[test]
    fn reopen_keeps_contents_and_tightens_modes() {
        let (dir, spool) = setup();
        let id = Spool::new_request_id();
        spool.submit(&id, b"x").unwrap();
        fs::set_permissions(&spool.new, fs::Permissions::from_mode(0o755)).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(mode(&spool.new), 0o700);
        assert_eq!(spool.pending().unwrap().len(), 1);

        fs::remove_file(&spool.wake).unwrap();
        fs::write(&spool.wake, b"").unwrap();
        assert!(matches!(
            Spool::open(dir.path()),
            Err(SpoolError::WrongType {
                found: "regular file",
                ..
            })
        ));
    }

    /// A server thread answering every request with its body reversed, as the supervisor would.
    fn echo_server(spool: Spool) -> (Sender<()>, JoinHandle<()>) {
        let (tx, rx) = bounded(1);
        spool.listen(tx.clone()).unwrap();
        let handle = std::thread::spawn(move || {
            while rx.recv().is_ok() {
                let pending = spool.pending().unwrap();
                if pending.is_empty() {
                    // The stop signal (a wake with nothing to do).
                    return;
                }
                for req in pending {
                    let mut body = spool.read(&req).unwrap();
                    body.reverse();
                    spool.reply(&req.id, &body).unwrap();
                    spool.finish(&req).unwrap();
                }
            }
        });
        (tx, handle)
    }

    #[test]
    fn waiter_wakes_on_reply_from_server_thread() {
        let (_dir, spool) = setup();
        let (_tx, server) = echo_server(spool.clone());
        for i in 0..20u8 {
            let id = Spool::new_request_id();
            let waiter = spool.reply_waiter(&id).unwrap();
            spool.submit(&id, &[i, 1, 2]).unwrap();
            let started = Instant::now();
            let reply = waiter.wait(BOUND).unwrap().unwrap();
            assert_eq!(reply, [2, 1, i]);
            assert!(started.elapsed() < BOUND);
        }
        spool.wake();
        within(move || server.join().unwrap());
    }

    #[test]
    fn pending_in_submission_order() {
        let (_dir, spool) = setup();
        let ids: Vec<String> = (0..50).map(|_| Spool::new_request_id()).collect();
        for (i, id) in ids.iter().enumerate() {
            spool.submit(id, format!("{i}").as_bytes()).unwrap();
        }
        let pending = spool.pending().unwrap();
        let got: Vec<&str> = pending.iter().map(|r| r.id.as_str()).collect();
        let want: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(got, want);
        for (i, req) in pending.iter().enumerate() {
            assert_eq!(spool.read(req).unwrap(), format!("{i}").as_bytes());
        }
    }

    #[test]
    fn symlink_is_refused_and_moved_aside_as_a_link() {
        let (dir, spool) = setup();
        let target = dir.path().join("secret");
        fs::write(&target, b"do not read").unwrap();
        let id = Spool::new_request_id();
        let link = plant(&spool, &format!("{id}.req"));
        symlink(&target, &link).unwrap();

        let pending = spool.pending().unwrap();
        assert_eq!(pending.len(), 1);
        match spool.read(&pending[0]) {
            Err(SpoolError::Symlink { path }) => assert_eq!(path, link),
            other => panic!("expected Symlink, got {other:?}"),
        }
        spool.reject(&pending[0], "symbolic link").unwrap();
        let moved = spool.rejected.join(format!("{id}.req"));
        let meta = fs::symlink_metadata(&moved).unwrap();
        assert!(meta.file_type().is_symlink());
        assert_eq!(fs::read_link(&moved).unwrap(), target);
        assert_eq!(fs::read(&target).unwrap(), b"do not read");
        assert_eq!(
            fs::read_to_string(spool.rejected.join(format!("{id}.reason"))).unwrap(),
            "symbolic link\n"
        );
        assert!(fs::symlink_metadata(&link).is_err());
        assert!(spool.pending().unwrap().is_empty());
    }

    #[test]
    fn oversized_request_is_refused() {
        let (_dir, spool) = setup();
        let id = Spool::new_request_id();
        let path = plant(&spool, &format!("{id}.req"));
        File::create(&path)
            .unwrap()
            .set_len(MAX_REQUEST_BYTES + 1)
            .unwrap();
        let pending = spool.pending().unwrap();
        match spool.read(&pending[0]) {
            Err(SpoolError::TooLarge { len, .. }) => assert_eq!(len, MAX_REQUEST_BYTES + 1),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn fifo_or_directory_is_refused_without_blocking() {
        let (_dir, spool) = setup();
        let fifo_id = Spool::new_request_id();
        nix::unistd::mkfifo(
            &plant(&spool, &format!("{fifo_id}.req")),
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .unwrap();
        let dir_id = Spool::new_request_id();
        fs::create_dir(plant(&spool, &format!("{dir_id}.req"))).unwrap();

        let pending = spool.pending().unwrap();
        assert_eq!(pending.len(), 2);
        let results = within({
            let spool = spool.clone();
            move || {
                pending
                    .iter()
                    .map(|req| spool.read(req))
                    .collect::<Vec<_>>()
            }
        });
        assert!(
            matches!(
                &results[0],
                Err(SpoolError::NotRegular { kind: "fifo", .. })
            ),
            "{:?}",
            results[0]
        );
        assert!(
            matches!(
                &results[1],
                Err(SpoolError::NotRegular {
                    kind: "directory",
                    ..
                })
            ),
            "{:?}",
            results[1]
        );
    }

    #[test]
    fn file_of_another_owner_is_refused() {
        let (_dir, spool) = setup();
        let id = Spool::new_request_id();
        spool.submit(&id, b"body").unwrap();
        let pending = spool.pending().unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&pending[0].path, Some(4242), None).unwrap();
            match spool.read(&pending[0]) {
                Err(SpoolError::WrongOwner { uid, .. }) => assert_eq!(uid, 4242),
                other => panic!("expected WrongOwner, got {other:?}"),
            }
        } else {
            // Without root we cannot give a file away, so the refusal cannot be exercised here
            // (CI runs as root, where the branch above runs); only check that our own file reads.
            assert_eq!(spool.read(&pending[0]).unwrap(), b"body");
        }
    }

    #[test]
    fn wake_without_listener_and_waiter_without_reply() {
        let (_dir, spool) = setup();
        within({
            let spool = spool.clone();
            move || spool.wake()
        });
        let waiter = spool.reply_waiter(&Spool::new_request_id()).unwrap();
        let slice = Duration::from_millis(50);
        let started = Instant::now();
        assert!(waiter.wait(slice).unwrap().is_none());
        let elapsed = started.elapsed();
        assert!(elapsed >= slice, "{elapsed:?}");
        assert!(elapsed < BOUND, "{elapsed:?}");
        assert!(waiter.wait(Duration::ZERO).unwrap().is_none());
    }

    #[test]
    fn a_full_wake_fifo_is_not_an_error() {
        let (_dir, spool) = setup();
        // Hold a reader that never reads, so writes eventually hit EAGAIN.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(&spool.wake)
            .unwrap();
        within(move || {
            for _ in 0..70_000 {
                spool.wake();
            }
        });
    }

    #[test]
    fn listener_coalesces_and_stops_when_disconnected() {
        let (_dir, spool) = setup();
        let (tx, rx) = bounded(1);
        let listener = spool.listen(tx).unwrap();
        for _ in 0..10 {
            spool.wake();
        }
        rx.recv_timeout(BOUND).unwrap();
        stop_listener(&spool, rx, listener);
    }

    #[test]
    fn junk_in_new_is_set_aside() {
        let (_dir, spool) = setup();
        let id = Spool::new_request_id();
        spool.submit(&id, b"ok").unwrap();
        let junk = [
            "notes.txt".to_owned(),
            format!("{id}.txt"),
            format!("{}.req", id.to_lowercase()),
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ.req".to_owned(),
            "01ARZ3NDEKTSV4RRFFQ69G5FAVX.req".to_owned(),
            "01ARZ3NDEKTSV4RRFFQ69G5FAI.req".to_owned(),
        ];
        for name in &junk {
            fs::write(plant(&spool, name), b"junk").unwrap();
        }
        fs::write(plant(&spool, ".hidden"), b"mine").unwrap();

        let pending = spool.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, id);
        for name in &junk {
            assert!(spool.rejected.join(name).exists(), "{name}");
            assert!(!spool.new.join(name).exists(), "{name}");
        }
        assert!(spool.new.join(".hidden").exists());
    }

    #[test]
    fn ids_are_checked() {
        let (_dir, spool) = setup();
        for bad in [
            "../../etc/passwd",
            "",
            "01ARZ3NDEKTSV4RRFFQ69G5FA",
            "01arz3ndektsv4rrffq69g5fav",
            "01ARZ3NDEKTSV4RRFFQ69G5FA/",
            "81ARZ3NDEKTSV4RRFFQ69G5FAV",
        ] {
            assert!(!is_request_id(bad), "{bad}");
            assert!(matches!(
                spool.submit(bad, b""),
                Err(SpoolError::InvalidId { .. })
            ));
            assert!(matches!(
                spool.reply(bad, b""),
                Err(SpoolError::InvalidId { .. })
            ));
            assert!(matches!(
                spool.reply_waiter(bad),
                Err(SpoolError::InvalidId { .. })
            ));
            let req = PendingRequest {
                id: bad.to_owned(),
                path: PathBuf::from("/etc/passwd"),
            };
            assert!(matches!(
                spool.read(&req),
                Err(SpoolError::InvalidId { .. })
            ));
        }
        assert!(is_request_id("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(is_request_id(&Spool::new_request_id()));
        assert!(fs::read_dir(&spool.tmp).unwrap().next().is_none());
    }

    #[test]
    fn reply_to_a_gone_client_is_cleaned_up() {
        let (_dir, spool) = setup();
        let id = Spool::new_request_id();
        spool.reply(&id, b"nobody listens").unwrap();
        assert_eq!(fs::read_dir(&spool.reply).unwrap().count(), 0);
    }

    #[test]
    fn stale_replies_of_gone_clients_are_removed() {
        let (_dir, spool) = setup();
        let alive = Spool::new_request_id();
        let waiter = spool.reply_waiter(&alive).unwrap();
        spool.reply(&alive, b"for a live client").unwrap();

        // A client that died: its FIFO is there but nobody holds it open.
        let dead = Spool::new_request_id();
        nix::unistd::mkfifo(
            &spool.reply.join(format!("{dead}.fifo")),
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .unwrap();
        fs::write(spool.reply.join(format!("{dead}.reply")), b"late").unwrap();
        fs::write(spool.reply.join(format!("{dead}.tmp")), b"partial").unwrap();
        fs::write(spool.tmp.join(format!("{dead}.req")), b"half written").unwrap();

        assert_eq!(
            spool
                .remove_stale_replies(Duration::from_secs(3600))
                .unwrap(),
            0
        );
        assert_eq!(spool.remove_stale_replies(Duration::ZERO).unwrap(), 4);
        let mut left: Vec<String> = fs::read_dir(&spool.reply)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [format!("{alive}.fifo"), format!("{alive}.reply")]);
        assert_eq!(
            waiter.wait(Duration::ZERO).unwrap().unwrap(),
            b"for a live client"
        );
    }

    #[test]
    fn oversized_submit_is_refused_before_writing() {
        let (_dir, spool) = setup();
        let id = Spool::new_request_id();
        let body = vec![0u8; usize::try_from(MAX_REQUEST_BYTES).unwrap() + 1];
        assert!(matches!(
            spool.submit(&id, &body),
            Err(SpoolError::TooLarge { .. })
        ));
        assert!(fs::read_dir(&spool.tmp).unwrap().next().is_none());
        assert!(spool.pending().unwrap().is_empty());
    }
}
