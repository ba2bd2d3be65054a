//! The data directory and its lock: where everything lives, and who owns the store.
//!
//! One directory holds the sled database (`db/`), the lock file (`lock`), the workers' lock
//! (`workers.lock`), the workers' attempt records (`attempts/`), the request spool (`spool/`),
//! space kept in reserve for a full disk (`reserved-space`) and `worker.log`. It is `--data-dir`, else
//! `$QUEUECTL_HOME`, else `$XDG_DATA_HOME/queuectl` (`~/.local/share/queuectl`), created on first
//! use with mode 0700.
//!
//! Ownership: whoever holds an exclusive fs2 lock on `lock` owns the store. A supervisor writes
//! its pid into the file after taking the lock; any other owner (a CLI command working directly)
//! empties it first, so a pid read from a *held* lock is always the live supervisor's. The
//! content of a lock nobody holds means nothing (a killed supervisor leaves its pid behind).
//!
//! Privacy and trust: the directory and everything of ours in it must belong to this user and be
//! writable by nobody else, or the command is refused before anything is read or written (a
//! planted `db` would run another user's commands, a planted `lock` or `worker.log` symbolic link
//! would truncate or append to its target). What passes is tightened on every open: the directory
//! and our subdirectories to 0700, our files to 0600. Files are opened with `O_NOFOLLOW`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of the data directory layer.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("no data directory: pass --data-dir, or set QUEUECTL_HOME or HOME")]
    NoHome,
    #[error("cannot {doing} {path}: {source}")]
    Io {
        doing: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("refusing {path}: it is a symbolic link")]
    Symlink { path: PathBuf },
    #[error("refusing {path}: it is owned by uid {uid}, not by this user (uid {euid})")]
    NotOwned { path: PathBuf, uid: u32, euid: u32 },
    #[error("refusing {path}: other users may write to it (mode {mode:04o})")]
    Writable { path: PathBuf, mode: u32 },
    #[error("refusing {path}: it is a {found}, expected a {expected}")]
    WrongType {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
    #[error("no queue at {}: the directory does not exist (check --data-dir or QUEUECTL_HOME)", path.display())]
    Missing { path: PathBuf },
}

impl DataDirError {
    /// Whether the data directory was refused as unsafe (not a failure of the system).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            DataDirError::Symlink { .. }
                | DataDirError::NotOwned { .. }
                | DataDirError::Writable { .. }
                | DataDirError::WrongType { .. }
                | DataDirError::NotADirectory { .. }
                | DataDirError::Missing { .. }
        )
    }
}

fn io_err<'a>(
    doing: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        doing,
        path: path.to_path_buf(),
        source,
    }
}

/// Who holds the store right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Nobody: the next command may open the store itself.
    Free,
    /// A supervisor with this pid.
    Supervisor(u32),
    /// Someone without a pid in the lock: a CLI command working directly, or a supervisor
    /// that has not written its pid yet.
    Busy,
}

/// The resolved data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    /// The shared PostgreSQL queue, when one was chosen (`--database-url`).
    database_url: Option<String>,
}

impl DataDir {
    /// Keeps the queue in the PostgreSQL database at `url` instead of this directory (which
    /// then holds only what is per host: the supervisor's lock and `worker.log`).
    pub fn with_database_url(mut self, url: Option<String>) -> DataDir {
        self.database_url = url.filter(|u| !u.is_empty());
        self
    }

    /// The shared queue's URL, if one was chosen.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    /// Names this data directory's supervisor among all that share a queue: host name and
    /// directory. Stable across restarts, so that a new supervisor finds its predecessor's jobs.
    pub fn host_key(&self) -> String {
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        let root = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("{host}:{}", root.display())
    }

    /// Picks the directory: the flag, else `$QUEUECTL_HOME`, else the per-user data directory.
    pub fn resolve(flag: Option<&Path>) -> Result<PathBuf, DataDirError> {
        if let Some(p) = flag {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("QUEUECTL_HOME").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        dirs::data_dir()
            .map(|d| d.join("queuectl"))
            .ok_or(DataDirError::NoHome)
    }

    /// Opens `root`, creating it (mode 0700) if it does not exist. An existing directory, and
    /// each file of ours at its top and in `spool/`, must belong to this user and be writable by
    /// nobody else (see [`secure`](DataDir::secure)); they are then tightened to 0700 (files
    /// 0600). What only the store's owner touches (`db/`, `attempts/`) is checked by
    /// [`secure_store`](DataDir::secure_store) once the lock is held: a command that hands its
    /// request to a running supervisor never reads those files.
    pub fn open(root: &Path) -> Result<DataDir, DataDirError> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {
                check_ours(root, &m)?;
                tighten(root, &m, DIR_MODE)?;
            }
            Ok(_) => {
                return Err(DataDirError::NotADirectory {
                    path: root.to_path_buf(),
                })
            }
            Err(_) => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(root)
                    .map_err(io_err("create the data directory", root))?;
                // `recursive` leaves existing parents alone; make sure of the leaf's mode.
                fs::set_permissions(root, fs::Permissions::from_mode(DIR_MODE))
                    .map_err(io_err("set permissions of", root))?;
            }
        }
        let dir = DataDir {
            root: root.to_path_buf(),
            database_url: None,
        };
        dir.secure()?;
        Ok(dir)
    }

    /// Checks and tightens the entries of ours at the top of the directory and in `spool/`: a
    /// symbolic link, a file of the wrong type or of another user, or one others may write to
    /// is refused (nothing was written yet); the rest get mode 0600 (directories 0700). Inside
    /// `db/` (see [`secure_store`](DataDir::secure_store)) entries must be ours and not links;
    /// their modes are tightened but group-writable ones are not refused there: the store
    /// creates its files with the process's umask, and the directories around them, checked
    /// first, are what keeps them private.
    fn secure(&self) -> Result<(), DataDirError> {
        for name in ["lock", "workers.lock", "worker.log", BALLAST] {
            let path = self.root.join(name);
            if let Some(meta) = lstat(&path)? {
                check_entry(&path, &meta, Kind::File)?;
                check_not_writable(&path, &meta)?;
                tighten(&path, &meta, FILE_MODE)?;
            }
        }
        self.secure_spool()
    }

    /// Checks and tightens the store's directory and the attempt records, as
    /// [`open`](DataDir::open) does the rest, creating them (mode 0700) where missing. The
    /// store's owner calls this with the lock held, before it opens the store.
    pub fn secure_store(&self) -> Result<(), DataDirError> {
        let db = self.store_path();
        match lstat(&db)? {
            None => match fs::DirBuilder::new().mode(DIR_MODE).create(&db) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", &db)(e)),
            },
            Some(meta) => {
                check_entry(&db, &meta, Kind::Dir)?;
                check_not_writable(&db, &meta)?;
                tighten(&db, &meta, DIR_MODE)?;
                secure_tree(&db, 2)?;
            }
        }
        let attempts = self.attempts_path();
        match lstat(&attempts)? {
            None => match fs::DirBuilder::new().mode(DIR_MODE).create(&attempts) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", &attempts)(e)),
            },
            Some(meta) => {
                check_entry(&attempts, &meta, Kind::Dir)?;
                check_not_writable(&attempts, &meta)?;
                tighten(&attempts, &meta, DIR_MODE)?;
                secure_tree(&attempts, 1)?;
            }
        }
        Ok(())
    }

    /// The spool's directories and wake FIFO, where they exist (the spool creates them).
    fn secure_spool(&self) -> Result<(), DataDirError> {
        let spool = self.root.join("spool");
        if let Some(meta) = lstat(&spool)? {
            check_entry(&spool, &meta, Kind::Dir)?;
            check_not_writable(&spool, &meta)?;
            tighten(&spool, &meta, DIR_MODE)?;
            for sub in ["tmp", "new", "reply", "rejected"] {
                let path = spool.join(sub);
                if let Some(meta) = lstat(&path)? {
                    check_entry(&path, &meta, Kind::Dir)?;
                    check_not_writable(&path, &meta)?;
                    tighten(&path, &meta, DIR_MODE)?;
                }
            }
            let wake = spool.join("wake");
            if let Some(meta) = lstat(&wake)? {
                check_entry(&wake, &meta, Kind::Fifo)?;
                tighten(&wake, &meta, FILE_MODE)?;
            }
        }
        Ok(())
    }

    /// Opens `root`, which must exist: commands that only read never create a data directory.
    pub fn open_existing(root: &Path) -> Result<DataDir, DataDirError> {
        match fs::symlink_metadata(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DataDirError::Missing {
                path: root.to_path_buf(),
            }),
            _ => DataDir::open(root),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sled database directory.
    pub fn store_path(&self) -> PathBuf {
        self.root.join("db")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Workers hold this shared; a new owner takes it exclusively to know old workers are gone.
    pub fn workers_lock_path(&self) -> PathBuf {
        self.root.join("workers.lock")
    }

    /// Keeps [`BALLAST_BYTES`] of the disk for the moment it fills up (created if missing; a
    /// failure only means there is no reserve yet). A full disk otherwise leaves no room even
    /// for the small request file of `status` or `worker stop`.
    pub fn ensure_ballast(&self) {
        let path = self.root.join(BALLAST);
        let file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(_) => return, // there already, or no room
        };
        if nix::fcntl::posix_fallocate(&file, 0, BALLAST_BYTES).is_err() {
            let _ = fs::remove_file(&path);
        }
    }

    /// Gives the reserved space back to the file system (see [`DataDir::ensure_ballast`]).
    /// Returns whether there was any.
    pub fn release_ballast(&self) -> bool {
        fs::remove_file(self.root.join(BALLAST)).is_ok()
    }

    /// Where workers record their running attempts (see `worker::attempt`).
    pub fn attempts_path(&self) -> PathBuf {
        self.root.join("attempts")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("worker.log")
    }

    /// Where running jobs' output is copied as it arrives (`live/`, cleared by each new
    /// supervisor).
    pub fn live_dir(&self) -> PathBuf {
        self.root.join("live")
    }

    /// The live output files (stdout, stderr) of run `run` of job `id`: the id in hex, so any
    /// id makes a safe file name.
    pub fn live_paths(&self, id: &str, run: u32) -> (PathBuf, PathBuf) {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        let dir = self.live_dir();
        (
            dir.join(format!("{hex}.{run}.out")),
            dir.join(format!("{hex}.{run}.err")),
        )
    }

    /// Empties (or creates, mode 0700) the live output directory.
    pub fn reset_live_dir(&self) -> Result<(), DataDirError> {
        let dir = self.live_dir();
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("clear", &dir)(e)),
        }
        fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(io_err("create", &dir))
    }

    fn open_lock_file(&self) -> Result<File, DataDirError> {
        open_lock(&self.lock_path())
    }

    /// Takes the store's lock if it is free. The lock file is emptied; a supervisor writes its
    /// pid with [`StoreLock::write_pid`].
    pub fn try_lock(&self) -> Result<Option<StoreLock>, DataDirError> {
        let file = self.open_lock_file()?;
        match fs2::FileExt::try_lock_exclusive(&file) {
            Ok(()) => {
                let lock = StoreLock { file };
                lock.write_content("")?;
                Ok(Some(lock))
            }
            Err(e) if is_contended(&e) => Ok(None),
            Err(e) => Err(io_err("lock", &self.lock_path())(e)),
        }
    }

    /// Who holds the store, without disturbing them.
    ///
    /// A supervisor that was killed looks dead (a zombie, or gone) a moment before the system
    /// has closed its files and so released the lock: a lock held in the name of a dead pid is
    /// waited for (at most [`DYING_GRACE`]) rather than reported as a running supervisor.
    pub fn holder(&self) -> Result<Holder, DataDirError> {
        let mut file = self.open_lock_file()?;
        let deadline = Instant::now() + DYING_GRACE;
        loop {
            match fs2::FileExt::try_lock_shared(&file) {
                Ok(()) => {
                    // Nobody held it exclusively. Let go at once.
                    let _ = fs2::FileExt::unlock(&file);
                    return Ok(Holder::Free);
                }
                Err(e) if is_contended(&e) => {
                    let mut s = String::new();
                    file.seek(SeekFrom::Start(0))
                        .and_then(|_| file.read_to_string(&mut s))
                        .map_err(io_err("read", &self.lock_path()))?;
                    match s.trim().parse::<u32>() {
                        Ok(pid) if pid > 0 => {
                            if pid_alive(pid) || Instant::now() >= deadline {
                                return Ok(Holder::Supervisor(pid));
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        _ => return Ok(Holder::Busy),
                    }
                }
                Err(e) => return Err(io_err("lock", &self.lock_path())(e)),
            }
        }
    }

    /// Waits until no old worker process holds `workers.lock` (they exit when their
    /// supervisor's pipe closes), at most `limit`. Returns whether they are all gone.
    pub fn wait_for_old_workers(&self, limit: Duration) -> Result<bool, DataDirError> {
        let path = self.workers_lock_path();
        let file = open_lock(&path)?;
        let deadline = Instant::now() + limit;
        loop {
            match fs2::FileExt::try_lock_exclusive(&file) {
                Ok(()) => {
                    let _ = fs2::FileExt::unlock(&file);
                    return Ok(true);
                }
                Err(e) if is_contended(&e) => {
                    if Instant::now() >= deadline {
                        return Ok(false);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(io_err("lock", &path)(e)),
            }
        }
    }
}

const DIR_MODE: u32 = 0o700;

/// The file holding space in reserve for a full disk, and its size.
const BALLAST: &str = "reserved-space";

/// Below this much free space nothing more is written to the data directory's disk but what
/// answers requests: the supervisor stops writing to the store (a store engine that runs out
/// of space in the middle of a write may not recover in that process; sled can wait forever
/// for the failed write) and workers stop copying output to `live/`.
pub const LOW_ROOM: u64 = 1024 * 1024;

/// Free bytes on the file system of `path` (for root, counting the blocks kept for root).
pub fn free_space(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let blocks = if euid() == 0 {
        s.blocks_free()
    } else {
        s.blocks_available()
    };
    Some(blocks.saturating_mul(s.fragment_size()))
}
const BALLAST_BYTES: i64 = 256 * 1024;

/// How long [`DataDir::holder`] waits for a dead supervisor's lock to be released.
const DYING_GRACE: Duration = Duration::from_secs(2);

/// Whether process `pid` exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold any byte.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X')),
        Err(_) => false,
    }
}
const FILE_MODE: u32 = 0o600;

/// What an entry of the data directory must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Fifo,
    /// Inside the store's directory: files or directories.
    Any,
}

/// What kind of file `ft` is, in users' words.
pub fn kind_name(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() {
        "regular file"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "file of unknown type"
    }
}

/// The effective user id: who owns the files queuectl makes.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The entry's own metadata (a link is not followed), `None` if there is none.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>, DataDirError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("examine", path)(e)),
    }
}

/// Refuses what this user does not own.
fn check_ours(path: &Path, meta: &fs::Metadata) -> Result<(), DataDirError> {
    use std::os::unix::fs::MetadataExt;
    let euid = euid();
    if meta.uid() != euid {
        return Err(DataDirError::NotOwned {
            path: path.to_path_buf(),
            uid: meta.uid(),
            euid,
        });
    }
    check_not_writable(path, meta)
}

/// Refuses what its group or other users may write to.
fn check_not_writable(path: &Path, meta: &fs::Metadata) -> Result<(), DataDirError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DataDirError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Refuses a symbolic link, an entry of the wrong type, or one of another user.
fn check_entry(path: &Path, meta: &fs::Metadata, kind: Kind) -> Result<(), DataDirError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(DataDirError::Symlink {
            path: path.to_path_buf(),
        });
    }
    let (ok, expected) = match kind {
        Kind::File => (ft.is_file(), "regular file"),
        Kind::Dir => (ft.is_dir(), "directory"),
        Kind::Fifo => (ft.is_fifo(), "fifo"),
        Kind::Any => (ft.is_file() || ft.is_dir(), "regular file or directory"),
    };
    if !ok {
        return Err(DataDirError::WrongType {
            path: path.to_path_buf(),
            expected,
            found: kind_name(ft),
        });
    }
    let euid = euid();
    if meta.uid() != euid {
        return Err(DataDirError::NotOwned {
            path: path.to_path_buf(),
            uid: meta.uid(),
            euid,
        });
    }
    Ok(())
}

/// Sets `mode` on an entry already checked to be ours (and not a link) if it differs.
fn tighten(path: &Path, meta: &fs::Metadata, mode: u32) -> Result<(), DataDirError> {
    if meta.permissions().mode() & 0o7777 != mode {
        match fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
            Ok(()) => {}
            // The store removed it meanwhile (a finished snapshot): nothing to tighten.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("set permissions of", path)(e)),
        }
    }
    Ok(())
}

/// Checks and tightens everything under the store's directory, `depth` levels deep.
fn secure_tree(dir: &Path, depth: u32) -> Result<(), DataDirError> {
    let entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        let path = entry.path();
        // The store may rename or remove its files while a command looks (a running supervisor).
        let Some(meta) = lstat(&path)? else { continue };
        check_entry(&path, &meta, Kind::Any)?;
        if meta.is_dir() {
            tighten(&path, &meta, DIR_MODE)?;
            if depth > 1 {
                secure_tree(&path, depth - 1)?;
            }
        } else {
            tighten(&path, &meta, FILE_MODE)?;
        }
    }
    Ok(())
}

/// Opens (creating, mode 0600) a file used only for its lock: never through a symbolic link,
/// and only a regular file of this user's.
fn open_lock(path: &Path) -> Result<File, DataDirError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                DataDirError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                io_err("open the lock file", path)(e)
            }
        })?;
    let meta = file.metadata().map_err(io_err("examine", path))?;
    check_entry(path, &meta, Kind::File)?;
    Ok(file)
}

fn is_contended(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
}

/// The held store lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StoreLock {
    file: File,
}

impl StoreLock {
    fn write_content(&self, s: &str) -> Result<(), DataDirError> {
        let mut f = &self.file;
        let r = f
            .set_len(0)
            .and_then(|()| f.seek(SeekFrom::Start(0)).map(drop))
            .and_then(|()| f.write_all(s.as_bytes()))
            .and_then(|()| f.sync_data());
        r.map_err(|source| DataDirError::Io {
            doing: "write the lock file",
            path: PathBuf::from("lock"),
            source,
        })
    }

    /// Names this process as the supervisor.
    pub fn write_pid(&self) -> Result<(), DataDirError> {
        self.write_content(&format!("{}\n", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_with_mode_0700_and_lock_is_exclusive() {
        let tmp = tempfile::TempDir::new().unwrap();
        let root = tmp.path().join("a/b");
        let dd = DataDir::open(&root).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(dd.holder().unwrap(), Holder::Free);
        let lock = dd.try_lock().unwrap().expect("free");
        assert!(dd.try_lock().unwrap().is_none(), "exclusive across opens");
        assert_eq!(dd.holder().unwrap(), Holder::Busy);
        lock.write_pid().unwrap();
        assert_eq!(dd.holder().unwrap(), Holder::Supervisor(std::process::id()));
        drop(lock);
        assert_eq!(
            dd.holder().unwrap(),
            Holder::Free,
            "a stale pid means nothing"
        );
        assert!(dd.wait_for_old_workers(Duration::from_millis(10)).unwrap());
    }

    #[test]
    fn a_file_is_not_a_data_directory() {
        let tmp = tempfile::TempDir::new().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, "x").unwrap();
        assert!(matches!(
            DataDir::open(&f),
            Err(DataDirError::NotADirectory { .. })
        ));
    }
}
