//! `queuectl export --sqlite`: writes the jobs and the configuration to an SQLite file with the
//! exact schema of the Node.js tool queuectl replaces, so existing SQL tools keep working.
//!
//! This module owns [`SCHEMA_SQL`] and is the only code in the crate that uses `rusqlite`. The
//! file is built under a temporary name in the destination directory, synced, then renamed over
//! the destination: a failed or interrupted export never leaves a half-written file at the
//! destination, and a failed export removes its temporary file.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

use crate::model::{format_ts, Config, Job};
use crate::store::{JobStore, ListOrder, StoreError};

/// Jobs read from the store per page while exporting (each page is read at one instant; see
/// [`export_store`]).
const EXPORT_PAGE: usize = 1_000;

/// The schema of the Node.js queuectl, with queuectl's own columns (`cwd`, `env`) after the
/// documented ones: tools that read the documented columns by name or position keep working.
pub const SCHEMA_SQL: &str = "\
CREATE TABLE jobs(
  id TEXT PRIMARY KEY,
  command TEXT NOT NULL,
  state TEXT CHECK (state IN ('pending','processing','completed','failed','dead')),
  attempts INTEGER DEFAULT 0,
  max_retries INTEGER DEFAULT 3,
  created_at TEXT,
  updated_at TEXT,
  available_at TEXT,
  locked_by TEXT,
  locked_at TEXT,
  last_error TEXT,
  priority INTEGER DEFAULT 0,
  cwd TEXT,
  env TEXT
);

CREATE TABLE config(
  key TEXT PRIMARY KEY,
  value TEXT
);
";

const INSERT_JOB_SQL: &str = "INSERT INTO jobs(id, command, state, attempts, max_retries, \
     created_at, updated_at, available_at, locked_by, locked_at, last_error, priority, cwd, env) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

const INSERT_CONFIG_SQL: &str = "INSERT INTO config(key, value) VALUES (?1, ?2)";

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// Rows in `jobs`.
    pub jobs: u64,
    /// Rows in `config`.
    pub config_keys: u64,
}

/// Why an export failed. Every variant names the destination; the underlying I/O or SQLite
/// error, when there is one, is the [`std::error::Error::source`] (print the chain to see it).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{} already exists (use --force to replace it)", path.display())]
    Exists { path: PathBuf },

    #[error("cannot export to {}: it is a directory", path.display())]
    IsDirectory { path: PathBuf },

    #[error("cannot export to {}: it is a {found}, and only a regular file is replaced", path.display())]
    NotRegular { path: PathBuf, found: &'static str },

    #[error("cannot export to {}: it does not name a file", path.display())]
    NoFileName { path: PathBuf },

    #[error("cannot export to {}: directory {} does not exist", path.display(), dir.display())]
    NoSuchDirectory { path: PathBuf, dir: PathBuf },

    #[error("cannot export to {}: {} is not a directory", path.display(), dir.display())]
    NotADirectory { path: PathBuf, dir: PathBuf },

    #[error("cannot export to {}: {doing} {}", path.display(), file.display())]
    Io {
        path: PathBuf,
        /// What was being done to `file`, e.g. "creating temporary file".
        doing: &'static str,
        file: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot export to {}: reading the queue failed", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },

    #[error("cannot export to {}: sqlite failed while {doing} in {}", path.display(), file.display())]
    Sqlite {
        path: PathBuf,
        /// What was being done, e.g. "inserting job `abc`".
        doing: String,
        file: PathBuf,
        #[source]
        source: Box<rusqlite::Error>,
    },
}

impl ExportError {
    /// Whether the destination was refused (the user's to fix) rather than the export failing.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ExportError::Exists { .. }
                | ExportError::IsDirectory { .. }
                | ExportError::NotRegular { .. }
                | ExportError::NoFileName { .. }
                | ExportError::NoSuchDirectory { .. }
                | ExportError::NotADirectory { .. }
        )
    }
}

/// Writes every job of `store` and its config to a new SQLite file at `path`, as
/// [`export_sqlite`] does, reading the jobs page by page ([`JobStore::list_page`] in id order,
/// [`EXPORT_PAGE`] at a time) on a second thread while this one writes: memory stays bounded
/// whatever the number of jobs, and the owner of the store may go on changing it meanwhile.
///
/// What the file holds: every page is read at one instant, so each job appears exactly once
/// (if it exists throughout), as it was when its page was read; a job that changed during the
/// export appears in its state before or after the change. The file as a whole is not one
/// instant of the queue.
pub fn export_store(
    store: &dyn JobStore,
    path: &Path,
    force: bool,
) -> Result<ExportSummary, ExportError> {
    let store_error = |source| ExportError::Store {
        path: path.to_path_buf(),
        source,
    };
    // Refuse a bad destination before reading anything.
    split_destination(path)?;
    check_destination(path, force)?;
    let config = store.config().map_err(store_error)?;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Job>, StoreError>>(4);
        scope.spawn(move || {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = match store.list_page(
                    &[],
                    ListOrder::Id,
                    after.as_deref(),
                    EXPORT_PAGE,
                    crate::model::now_ms(),
                ) {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                // The writer gave up (an error of its own): stop reading.
                if tx.send(Ok(page.jobs)).is_err() {
                    return;
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => return,
                }
            }
        });
        let jobs = rx.into_iter().flat_map(|page| match page {
            Ok(jobs) => jobs.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(store_error(e))],
        });
        write_file(path, force, jobs, &config)
    })
}

/// Writes `jobs` and `config` to a new SQLite file at `path`.
///
/// An existing `path` is refused unless `force`, in which case it is replaced atomically. The
/// rows are written in one transaction to a temporary file next to `path`, which is synced and
/// renamed into place; the directory is synced afterwards. On error the temporary file is
/// removed and `path` is left as it was.
pub fn export_sqlite<I: IntoIterator<Item = Job>>(
    path: &Path,
    force: bool,
    jobs: I,
    config: &Config,
) -> Result<ExportSummary, ExportError> {
    write_file(path, force, jobs.into_iter().map(Ok), config)
}

/// [`export_sqlite`] of jobs that may fail to be read (the export then fails).
fn write_file<I: IntoIterator<Item = Result<Job, ExportError>>>(
    path: &Path,
    force: bool,
    jobs: I,
    config: &Config,
) -> Result<ExportSummary, ExportError> {
    let (dir, name) = split_destination(path)?;
    check_destination(path, force)?;

    let tmp = TempFile::create(path, &dir, &name)?;
    let summary = write_database(path, &tmp.path, jobs, config)?;

    // The connection is closed: make the contents durable before they get the final name.
    File::open(&tmp.path)
        .and_then(|f| f.sync_all())
        .map_err(|source| io_error(path, "syncing temporary file", &tmp.path, source))?;
    crate::crashpoint::hit("export");
    publish(path, force, tmp)?;
    sync_dir(&dir).map_err(|source| io_error(path, "syncing directory", &dir, source))?;
    Ok(summary)
}

/// The directory that will hold `path` (checked to be one) and the file name.
fn split_destination(path: &Path) -> Result<(PathBuf, OsString), ExportError> {
    let name = match path.file_name() {
        Some(n) => n.to_os_string(),
        None => {
            return Err(ExportError::NoFileName {
                path: path.to_path_buf(),
            })
        }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok((dir, name)),
        Ok(_) => Err(ExportError::NotADirectory {
            path: path.to_path_buf(),
            dir,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ExportError::NoSuchDirectory {
            path: path.to_path_buf(),
            dir,
        }),
        // Some ancestor of the directory is not a directory: name that one.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => {
            let culprit = dir
                .ancestors()
                .find(|a| fs::metadata(a).is_ok_and(|m| !m.is_dir()))
                .unwrap_or(&dir)
                .to_path_buf();
            Err(ExportError::NotADirectory {
                path: path.to_path_buf(),
                dir: culprit,
            })
        }
        Err(source) => Err(io_error(path, "reading directory", &dir, source)),
    }
}

/// Fails early, before any work, if `path` may not be written.
fn check_destination(path: &Path, force: bool) -> Result<(), ExportError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(ExportError::IsDirectory {
            path: path.to_path_buf(),
        }),
        Ok(_) if !force => Err(ExportError::Exists {
            path: path.to_path_buf(),
        }),
        // `--force` replaces a file, never a device, a FIFO or a symbolic link's name.
        Ok(m) if !m.file_type().is_file() => Err(ExportError::NotRegular {
            path: path.to_path_buf(),
            found: crate::datadir::kind_name(m.file_type()),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error(path, "checking", path, source)),
    }
}

/// Creates the tables and loads every row into the (empty) file at `file`.
fn write_database<I: IntoIterator<Item = Result<Job, ExportError>>>(
    path: &Path,
    file: &Path,
    jobs: I,
    config: &Config,
) -> Result<ExportSummary, ExportError> {
    let sql_err = |doing: &str| {
        let doing = doing.to_string();
        move |source| ExportError::Sqlite {
            path: path.to_path_buf(),
            doing,
            file: file.to_path_buf(),
            source: Box::new(source),
        }
    };

    let mut conn = Connection::open(file).map_err(sql_err("opening the database"))?;
    // Nothing needs to survive a crash until the file is complete: we sync it ourselves, and a
    // crash leaves only the temporary file. No journal also means no `-journal` file to clean.
    conn.pragma_update_and_check(None, "journal_mode", "OFF", |r| r.get::<_, String>(0))
        .map_err(sql_err("setting journal_mode"))?;
    let load_settings: [(&str, &dyn rusqlite::ToSql); 4] = [
        ("synchronous", &"OFF"),
        ("locking_mode", &"EXCLUSIVE"),
        // 64 MiB of page cache: 100,000 jobs fit without spilling pages mid-transaction.
        ("cache_size", &-65_536_i64),
        // The CHECK on `state` stays in the schema, for the tools that open the file; while
        // loading it is skipped, since every value comes from `JobState::as_str`. Checking
        // it builds a temporary b-tree of the IN list for every row, half the export's time.
        ("ignore_check_constraints", &true),
    ];
    for (name, value) in load_settings {
        conn.pragma_update(None, name, value)
            .map_err(sql_err(&format!("setting {name}")))?;
    }

    let tx = conn
        .transaction()
        .map_err(sql_err("starting the transaction"))?;
    tx.execute_batch(SCHEMA_SQL)
        .map_err(sql_err("creating the tables"))?;
    let mut summary = ExportSummary {
        jobs: 0,
        config_keys: 0,
    };
    {
        let mut insert = tx
            .prepare(INSERT_JOB_SQL)
            .map_err(sql_err("preparing the job insert"))?;
        for job in jobs {
            let job = job?;
            insert
                .execute(params![
                    job.id,
                    job.command,
                    job.state.as_str(),
                    job.attempts,
                    job.max_retries,
                    format_ts(job.created_at),
                    format_ts(job.updated_at),
                    job.available_at.map(format_ts),
                    job.locked_by,
                    job.locked_at.map(format_ts),
                    job.last_error,
                    job.priority,
                    job.cwd,
                    env_json(&job.env),
                ])
                .map_err(|source| ExportError::Sqlite {
                    path: path.to_path_buf(),
                    doing: format!("inserting job `{}`", job.id),
                    file: file.to_path_buf(),
                    source: Box::new(source),
                })?;
            summary.jobs += 1;
        }

        let mut insert = tx
            .prepare(INSERT_CONFIG_SQL)
            .map_err(sql_err("preparing the config insert"))?;
        for (key, value) in config.entries() {
            insert
                .execute(params![key, value.to_string()])
                .map_err(|source| ExportError::Sqlite {
                    path: path.to_path_buf(),
                    doing: format!("inserting config key `{key}`"),
                    file: file.to_path_buf(),
                    source: Box::new(source),
                })?;
            summary.config_keys += 1;
        }
    }
    tx.commit().map_err(sql_err("committing"))?;
    conn.close()
        .map_err(|(_, source)| sql_err("closing the database")(source))?;
    Ok(summary)
}

/// Gives the finished temporary file its final name. Without `force` this never replaces a
/// file, even one created by someone else while the export ran.
fn publish(path: &Path, force: bool, mut tmp: TempFile) -> Result<(), ExportError> {
    if !force {
        match fs::hard_link(&tmp.path, path) {
            Ok(()) => {
                // `path` now holds the complete file; dropping `tmp` unlinks the other name.
                drop(tmp);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ExportError::Exists {
                    path: path.to_path_buf(),
                });
            }
            // A file system without hard links: fall back to check-then-rename.
            Err(_) => check_destination(path, force)?,
        }
    } else {
        // Again, just before the rename: still nothing but a regular file is replaced.
        check_destination(path, force)?;
    }
    fs::rename(&tmp.path, path).map_err(|source| {
        if path.is_dir() {
            ExportError::IsDirectory {
                path: path.to_path_buf(),
            }
        } else {
            io_error(path, "renaming temporary file", &tmp.path, source)
        }
    })?;
    tmp.keep();
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_error(path: &Path, doing: &'static str, file: &Path, source: io::Error) -> ExportError {
    ExportError::Io {
        path: path.to_path_buf(),
        doing,
        file: file.to_path_buf(),
        source,
    }
}

/// The file being built; removed when dropped unless [`TempFile::keep`] was called, so every
/// early return (and a panic in the caller's job iterator) cleans up.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// Creates `.<name>.tmp-<pid>-<nanos>` in `dir`; never opens an existing file.
    fn create(dest: &Path, dir: &Path, name: &OsString) -> Result<TempFile, ExportError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}-{nanos}", std::process::id()));
        let path = dir.join(tmp_name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| io_error(dest, "creating temporary file", &path, source))?;
        Ok(TempFile { path, keep: false })
    }

    fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = fs::remove_file(&self.path);
        // journal_mode is OFF, but should SQLite have made a journal before that took effect,
        // it goes too.
        let mut journal = self.path.clone().into_os_string();
        journal.push("-journal");
        let _ = fs::remove_file(journal);
    }
}

/// A job's environment as a JSON object (`{"LANG":"C"}`), or NULL when it adds nothing.
fn env_json(env: &[(String, String)]) -> Option<String> {
    if env.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = env
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Some(serde_json::Value::Object(map).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobState;
    use rusqlite::types::Value;
    use std::collections::BTreeSet;

    /// The Node.js queuectl's schema as documented; [`SCHEMA_SQL`] must not drift from it.
    const DOCUMENTED_JOBS: &str = "CREATE TABLE jobs(
  id TEXT PRIMARY KEY,
  command TEXT NOT NULL,
  state TEXT CHECK (state IN ('pending','processing','completed','failed','dead')),
  attempts INTEGER DEFAULT 0,
  max_retries INTEGER DEFAULT 3,
  created_at TEXT,
  updated_at TEXT,
  available_at TEXT,
  locked_by TEXT,
  locked_at TEXT,
  last_error TEXT,
  priority INTEGER DEFAULT 0
)";
    const DOCUMENTED_CONFIG: &str = "CREATE TABLE config(
  key TEXT PRIMARY KEY,
  value TEXT
)";

    /// The documented table with queuectl's columns after the documented ones.
    fn ours_jobs() -> String {
        DOCUMENTED_JOBS.replace(
            "priority INTEGER DEFAULT 0\n)",
            "priority INTEGER DEFAULT 0,\n  cwd TEXT,\n  env TEXT\n)",
        )
    }

    fn job(i: u64, state: JobState, full: bool) -> Job {
        let t = 1_762_676_473_456 + i * 1001;
        Job {
            id: format!("job-{i:04}"),
            command: format!("echo 'it''s {i}' \"quoted\" ünïcode"),
            state,
            attempts: (i % 4) as u32,
            max_retries: 3 + (i % 2) as u32,
            created_at: t,
            updated_at: t + 5,
            available_at: full.then_some(t + 10),
            locked_by: full.then(|| format!("worker-{i}")),
            locked_at: full.then_some(t + 7),
            last_error: full.then(|| "exit code 1".to_string()),
            priority: i as i64 - 2,
            timeout_ms: full.then_some(1500),
            seq: i,
            pgid: None,
            runs: 1,
            cwd: None,
            env: Vec::new(),
        }
    }

    fn sample_jobs() -> Vec<Job> {
        let mut jobs: Vec<Job> = JobState::ALL
            .iter()
            .enumerate()
            .flat_map(|(n, &st)| {
                let i = n as u64 * 2;
                [job(i, st, true), job(i + 1, st, false)]
            })
            .collect();
        jobs.push(Job {
            available_at: Some(0),
            ..job(99, JobState::Pending, false)
        });
        jobs
    }

    fn dir_entries(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn opt_text(v: Option<String>) -> Value {
        v.map_or(Value::Null, Value::Text)
    }

    #[test]
    fn schema_is_exactly_the_documented_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        export_sqlite(&db, false, sample_jobs(), &Config::default()).unwrap();
        let conn = Connection::open(&db).unwrap();

        type Col = (String, String, bool, Option<String>, i64);
        let table_info = |table: &str| -> Vec<Col> {
            let mut st = conn
                .prepare(&format!("PRAGMA table_info({table})"))
                .unwrap();
            let rows = st
                .query_map([], |r| {
                    Ok((r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
                .unwrap();
            rows.map(Result::unwrap).collect()
        };
        let col = |name: &str, ty: &str, notnull: bool, dflt: Option<&str>, pk: i64| -> Col {
            (name.into(), ty.into(), notnull, dflt.map(String::from), pk)
        };
        assert_eq!(
            table_info("jobs"),
            vec![
                col("id", "TEXT", false, None, 1),
                col("command", "TEXT", true, None, 0),
                col("state", "TEXT", false, None, 0),
                col("attempts", "INTEGER", false, Some("0"), 0),
                col("max_retries", "INTEGER", false, Some("3"), 0),
                col("created_at", "TEXT", false, None, 0),
                col("updated_at", "TEXT", false, None, 0),
                col("available_at", "TEXT", false, None, 0),
                col("locked_by", "TEXT", false, None, 0),
                col("locked_at", "TEXT", false, None, 0),
                col("last_error", "TEXT", false, None, 0),
                col("priority", "INTEGER", false, Some("0"), 0),
                col("cwd", "TEXT", false, None, 0),
                col("env", "TEXT", false, None, 0),
            ]
        );
        assert_eq!(
            table_info("config"),
            vec![
                col("key", "TEXT", false, None, 1),
                col("value", "TEXT", false, None, 0),
            ]
        );

        let mut st = conn
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY name")
            .unwrap();
        let objects: Vec<(String, String, Option<String>)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let auto = |name: &str| ("index".to_string(), name.to_string(), None);
        assert_eq!(
            objects,
            vec![
                (
                    "table".into(),
                    "config".into(),
                    Some(DOCUMENTED_CONFIG.into())
                ),
                ("table".into(), "jobs".into(), Some(ours_jobs())),
                auto("sqlite_autoindex_config_1"),
                auto("sqlite_autoindex_jobs_1"),
            ]
        );
        assert_eq!(
            SCHEMA_SQL,
            format!("{};\n\n{DOCUMENTED_CONFIG};\n", ours_jobs())
        );
        // A normal database for the tools that open it: not left in some odd journal mode.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }

    #[test]
    fn rows_equal_the_input_field_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let jobs = sample_jobs();
        let config = Config {
            max_retries: 7,
            backoff_base: 3,
            poll_interval_ms: 250,
            retention_completed: crate::model::KEEP,
            retention_dead: crate::model::KEEP,
            lease_ms: 5_000,
        };
        let summary = export_sqlite(&db, false, jobs.clone(), &config).unwrap();
        assert_eq!(
            summary,
            ExportSummary {
                jobs: jobs.len() as u64,
                config_keys: 6
            }
        );

        let conn = Connection::open(&db).unwrap();
        let mut st = conn.prepare("SELECT * FROM jobs ORDER BY id").unwrap();
        let got: Vec<Vec<Value>> = st
            .query_map([], |r| (0..12).map(|i| r.get::<_, Value>(i)).collect())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut want_jobs = jobs.clone();
        want_jobs.sort_by(|a, b| a.id.cmp(&b.id));
        let want: Vec<Vec<Value>> = want_jobs
            .into_iter()
            .map(|j| {
                vec![
                    Value::Text(j.id),
                    Value::Text(j.command),
                    Value::Text(j.state.as_str().into()),
                    Value::Integer(j.attempts.into()),
                    Value::Integer(j.max_retries.into()),
                    Value::Text(format_ts(j.created_at)),
                    Value::Text(format_ts(j.updated_at)),
                    opt_text(j.available_at.map(format_ts)),
                    opt_text(j.locked_by),
                    opt_text(j.locked_at.map(format_ts)),
                    opt_text(j.last_error),
                    Value::Integer(j.priority),
                ]
            })
            .collect();
        assert_eq!(got, want);
        // Spot-check the time format itself, not just agreement with format_ts.
        let first: String = conn
            .query_row(
                "SELECT created_at FROM jobs WHERE id = 'job-0000'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(first, "2025-11-09T08:21:13.456Z");
        let epoch: String = conn
            .query_row(
                "SELECT available_at FROM jobs WHERE id = 'job-0099'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(epoch, "1970-01-01T00:00:00.000Z");

        let mut st = conn
            .prepare("SELECT key, value, typeof(value) FROM config ORDER BY rowid")
            .unwrap();
        let got: Vec<(String, String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let text = |k: &str, v: &str| (k.to_string(), v.to_string(), "text".to_string());
        assert_eq!(
            got,
            vec![
                text("max_retries", "7"),
                text("backoff_base", "3"),
                text("poll_interval_ms", "250"),
                text("retention_completed", "0"),
                text("retention_dead", "0"),
                text("lease_ms", "5000"),
            ]
        );
        assert_eq!(dir_entries(dir.path()), BTreeSet::from(["q.db".into()]));
    }

    #[test]
    fn empty_queue_gives_empty_tables() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let summary = export_sqlite(&db, false, Vec::new(), &Config::default()).unwrap();
        assert_eq!(summary.jobs, 0);
        let conn = Connection::open(&db).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn check_constraint_rejects_unknown_states() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        export_sqlite(&db, false, sample_jobs(), &Config::default()).unwrap();
        let conn = Connection::open(&db).unwrap();
        let err = conn
            .execute(
                "INSERT INTO jobs(id, command, state) VALUES ('x', 'true', 'bogus')",
                [],
            )
            .unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation),
            "{err}"
        );
        conn.execute(
            "INSERT INTO jobs(id, command, state) VALUES ('y', 'true', 'dead')",
            [],
        )
        .unwrap();
    }

    #[test]
    fn existing_file_is_refused_without_force_and_replaced_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let before = b"precious, not a database".to_vec();
        fs::write(&db, &before).unwrap();

        let err = export_sqlite(&db, false, sample_jobs(), &Config::default()).unwrap_err();
        assert!(matches!(err, ExportError::Exists { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&db.display().to_string()), "{msg}");
        assert!(msg.contains("--force"), "{msg}");
        assert_eq!(fs::read(&db).unwrap(), before);
        assert_eq!(dir_entries(dir.path()), BTreeSet::from(["q.db".into()]));

        let summary = export_sqlite(&db, true, sample_jobs(), &Config::default()).unwrap();
        assert_eq!(summary.jobs, sample_jobs().len() as u64);
        let conn = Connection::open(&db).unwrap();
        let n: u64 = conn
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, summary.jobs);
        assert_eq!(dir_entries(dir.path()), BTreeSet::from(["q.db".into()]));
    }

    #[test]
    fn path_under_a_regular_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file.txt");
        fs::write(&file, "x").unwrap();
        for db in [file.join("out.db"), file.join("sub").join("out.db")] {
            let err = export_sqlite(&db, true, sample_jobs(), &Config::default()).unwrap_err();
            match &err {
                ExportError::NotADirectory { dir, .. } => assert_eq!(dir, &file),
                _ => panic!("{err:?}"),
            }
            assert!(err.to_string().contains(&db.display().to_string()), "{err}");
        }
        assert_eq!(dir_entries(dir.path()), BTreeSet::from(["file.txt".into()]));
        assert_eq!(fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn missing_directory_and_directory_destination_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("nope").join("out.db");
        let err = export_sqlite(&db, false, sample_jobs(), &Config::default()).unwrap_err();
        assert!(
            matches!(err, ExportError::NoSuchDirectory { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&db.display().to_string()), "{err}");

        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        let err = export_sqlite(&sub, true, sample_jobs(), &Config::default()).unwrap_err();
        assert!(matches!(err, ExportError::IsDirectory { .. }), "{err:?}");
        assert!(sub.is_dir());
        assert_eq!(dir_entries(dir.path()), BTreeSet::from(["sub".into()]));
    }

    #[test]
    fn failed_export_changes_nothing_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let mut jobs = sample_jobs();
        jobs.push(jobs[0].clone()); // duplicate primary key

        let err = export_sqlite(&db, false, jobs.clone(), &Config::default()).unwrap_err();
        assert!(matches!(err, ExportError::Sqlite { .. }), "{err:?}");
        assert!(err.to_string().contains("job-0000"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        assert!(dir_entries(dir.path()).is_empty());

        fs::write(&db, b"old").unwrap();
        export_sqlite(&db, true, jobs, &Config::default()).unwrap_err();
        assert_eq!(fs::read(&db).unwrap(), b"old");
        assert_eq!(dir_entries(dir.path()), BTreeSet::from(["q.db".into()]));
    }

    #[test]
    fn panicking_job_source_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.db");
        let jobs = sample_jobs().into_iter().enumerate().map(|(i, j)| {
            if i < 3 {
                j
            } else {
                panic!("source failed")
            }
        });
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            export_sqlite(&db, false, jobs, &Config::default())
        }));
        assert!(r.is_err());
        assert!(dir_entries(dir.path()).is_empty());
    }

    #[test]
    fn relative_path_uses_the_current_directory() {
        // Only checks the path split; the working directory is shared by all tests.
        let (dir, name) = split_destination(Path::new("out.db")).unwrap();
        assert_eq!((dir, name), (PathBuf::from("."), OsString::from("out.db")));
        assert!(matches!(
            split_destination(Path::new("/")),
            Err(ExportError::NoFileName { .. })
        ));
    }

    #[test]
    fn error_messages_are_lower_case_one_liners() {
        let p = PathBuf::from("/x/q.db");
        let d = PathBuf::from("/x");
        let errs = [
            ExportError::Exists { path: p.clone() },
            ExportError::IsDirectory { path: p.clone() },
            ExportError::NoFileName { path: p.clone() },
            ExportError::NoSuchDirectory {
                path: p.clone(),
                dir: d.clone(),
            },
            ExportError::NotADirectory {
                path: p.clone(),
                dir: d.clone(),
            },
            io_error(&p, "syncing directory", &d, io::Error::other("boom")),
        ];
        for e in errs {
            let m = e.to_string();
            assert!(m.contains("/x/q.db"), "{m}");
            assert!(!m.ends_with('.') && !m.contains('\n'), "{m}");
            assert!(m.starts_with(|c: char| !c.is_uppercase()), "{m}");
        }
    }

    #[test]
    fn error_fits_anyhow() {
        fn assert_bounds<E: std::error::Error + Send + Sync + 'static>() {}
        assert_bounds::<ExportError>();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn arbitrary_text_round_trips(
            command in "\\PC{1,40}",
            last_error in proptest::option::of("\\PC{0,40}"),
            priority in proptest::num::i64::ANY,
            attempts in proptest::num::u32::ANY,
            created in 0u64..=253_402_300_799_999,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("q.db");
            let j = Job {
                command: command.clone(),
                last_error: last_error.clone(),
                priority,
                attempts,
                created_at: created,
                ..job(1, JobState::Failed, false)
            };
            export_sqlite(&db, false, [j], &Config::default()).unwrap();
            let conn = Connection::open(&db).unwrap();
            let row: (String, Option<String>, i64, i64, String) = conn
                .query_row(
                    "SELECT command, last_error, priority, attempts, created_at FROM jobs",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .unwrap();
            proptest::prop_assert_eq!(
                row,
                (command, last_error, priority, i64::from(attempts), format_ts(created))
            );
        }
    }
}
