//! The data directory and its lock: where everything lives, and who owns the store.
//!
//! One directory holds the sled database (`db/`), the lock file (`lock`), the workers' lock
//! (`workers.lock`), the request spool (`spool/`) and `worker.log`. It is `--data-dir`, else
//! `$QUEUECTL_HOME`, else `$XDG_DATA_HOME/queuectl` (`~/.local/share/queuectl`), created on first
//! use with mode 0700.
//!
//! Ownership: whoever holds an exclusive fs2 lock on `lock` owns the store. A supervisor writes
//! its pid into the file after taking the lock; any other owner (a CLI command working directly)
//! empties it first, so a pid read from a *held* lock is always the live supervisor's. The
//! content of a lock nobody holds means nothing (a killed supervisor leaves its pid behind).

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
}

impl DataDir {
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

    /// Opens `root`, creating it (mode 0700) if it does not exist.
    pub fn open(root: &Path) -> Result<DataDir, DataDirError> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(DataDirError::NotADirectory {
                    path: root.to_path_buf(),
                })
            }
            Err(_) => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(root)
                    .map_err(io_err("create the data directory", root))?;
                // `recursive` leaves existing parents alone; make sure of the leaf's mode.
                fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                    .map_err(io_err("set permissions of", root))?;
            }
        }
        Ok(DataDir {
            root: root.to_path_buf(),
        })
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

    pub fn log_path(&self) -> PathBuf {
        self.root.join("worker.log")
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
    pub fn holder(&self) -> Result<Holder, DataDirError> {
        let mut file = self.open_lock_file()?;
        match fs2::FileExt::try_lock_shared(&file) {
            Ok(()) => {
                // Nobody held it exclusively. Let go at once.
                let _ = fs2::FileExt::unlock(&file);
                Ok(Holder::Free)
            }
            Err(e) if is_contended(&e) => {
                let mut s = String::new();
                file.read_to_string(&mut s)
                    .map_err(io_err("read", &self.lock_path()))?;
                Ok(match s.trim().parse::<u32>() {
                    Ok(pid) if pid > 0 => Holder::Supervisor(pid),
                    _ => Holder::Busy,
                })
            }
            Err(e) => Err(io_err("lock", &self.lock_path())(e)),
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

/// Opens (creating, mode 0600) a file used only for its lock.
fn open_lock(path: &Path) -> Result<File, DataDirError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err("open the lock file", path))
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
