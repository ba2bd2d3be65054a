//! The promises at the edges (issue 10): a hostile or careless data directory, debris of an
//! interrupted open, crash points, a full disk, and the smaller cases. Each test names the
//! issue's case it covers.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::Env;

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Case 5: a data directory writable by others is refused with exit 2, and nothing is created.
#[test]
fn world_or_group_writable_data_directory_is_refused() {
    for bad in [0o777, 0o770, 0o1777] {
        let env = Env::new();
        fs::set_permissions(env.path(), fs::Permissions::from_mode(bad)).unwrap();
        let err = env.fails(&["status"], 2);
        assert!(err.contains("refusing") && err.contains("write"), "{err}");
        assert_eq!(
            fs::read_dir(env.path()).unwrap().count(),
            0,
            "nothing created"
        );
        assert_eq!(mode(env.path()), bad, "left as it was");
        fs::set_permissions(env.path(), fs::Permissions::from_mode(0o700)).unwrap();
    }
}

/// Case 5: a data directory of another user is refused (as root the test hands a directory to
/// `nobody`; otherwise `/` already belongs to another user).
#[test]
fn data_directory_of_another_user_is_refused() {
    let env = Env::new();
    let dir = if is_root() {
        let d = env.file("theirs");
        fs::create_dir(&d).unwrap();
        nix::unistd::chown(&d, Some(65534.into()), Some(65534.into())).unwrap();
        d
    } else {
        "/".into()
    };
    let out = assert_cmd::Command::cargo_bin("queuectl")
        .unwrap()
        .args(["--data-dir", dir.to_str().unwrap(), "status"])
        .timeout(common::DEADLINE)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("refusing") && err.contains("owned by uid"),
        "{err}"
    );
}

/// Case 5: a `db` planted by another user (no `spool/`) is never opened, let alone run.
#[test]
fn store_planted_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED store_planted_by_another_user_is_refused: needs root to chown");
        return;
    }
    let env = Env::new();
    env.enqueue(r#"{"id":"a","command":"true"}"#);
    let db = env.path().join("db");
    for entry in fs::read_dir(&db).unwrap() {
        let p = entry.unwrap().path();
        nix::unistd::chown(&p, Some(65534.into()), None).unwrap();
    }
    nix::unistd::chown(&db, Some(65534.into()), None).unwrap();
    let err = env.fails(&["status"], 2);
    assert!(err.contains("refusing") && err.contains("db"), "{err}");
    let err = env.fails(&["worker", "start"], 2);
    assert!(err.contains("refusing"), "{err}");
}

/// Case 5: symbolic links planted where our files go are refused and never followed.
#[test]
fn planted_symlinks_are_refused_and_not_followed() {
    for (name, args) in [
        ("lock", &["status"][..]),
        ("workers.lock", &["status"][..]),
        ("worker.log", &["worker", "start", "--count", "1"][..]),
        ("db", &["status"][..]),
    ] {
        let env = Env::new();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("target");
        fs::write(&target, "precious\n").unwrap();
        symlink(&target, env.path().join(name)).unwrap();
        let err = env.fails(args, 2);
        assert!(
            err.contains("refusing") && err.contains("symbolic link") && err.contains(name),
            "{name}: {err}"
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n", "{name}");
        assert!(env.processes().is_empty(), "{name}: nothing started");
    }
}

/// Case 5: a file of ours that others may write to, or of the wrong type, is refused.
#[test]
fn writable_or_wrong_type_files_are_refused() {
    let env = Env::new();
    env.enqueue(r#"{"id":"a","command":"true"}"#);
    let lock = env.path().join("lock");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o666)).unwrap();
    let err = env.fails(&["status"], 2);
    assert!(err.contains("refusing") && err.contains("lock"), "{err}");
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(&lock).unwrap();
    nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let err = env.fails(&["status"], 2);
    assert!(err.contains("refusing") && err.contains("fifo"), "{err}");
    fs::remove_file(&lock).unwrap();
    assert_eq!(env.count("pending"), 1, "the store is untouched");
}

/// Case 6: an existing data directory made with wide modes is made private on open.
#[test]
fn existing_directory_and_files_are_tightened() {
    let env = Env::new();
    env.enqueue(r#"{"id":"a","command":"echo secret-token"}"#);
    fs::write(env.path().join("worker.log"), "").unwrap();
    let root = env.path();
    let db = root.join("db");
    let mut files = vec![root.join("lock"), root.join("worker.log")];
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&db, fs::Permissions::from_mode(0o755)).unwrap();
    for entry in fs::read_dir(&db).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            files.push(p);
        }
    }
    for f in &files {
        fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
    }
    assert_eq!(env.count("pending"), 1);
    assert_eq!(mode(root), 0o700);
    assert_eq!(mode(&db), 0o700);
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}

/// Case 7: `export --force` replaces only a regular file: not a FIFO, a device or a link.
#[test]
fn export_force_replaces_only_a_regular_file() {
    let env = Env::new();
    env.enqueue(r#"{"id":"a","command":"true"}"#);
    let outside = tempfile::tempdir().unwrap();
    let fifo = outside.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let err = env.fails(
        &["export", "--sqlite", fifo.to_str().unwrap(), "--force"],
        2,
    );
    assert!(
        err.contains("fifo") && err.contains("regular file"),
        "{err}"
    );
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    let target = outside.path().join("target");
    fs::write(&target, "precious").unwrap();
    let link = outside.path().join("link");
    symlink(&target, &link).unwrap();
    let err = env.fails(
        &["export", "--sqlite", link.to_str().unwrap(), "--force"],
        2,
    );
    assert!(err.contains("symbolic link"), "{err}");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious");

    let file = outside.path().join("file.db");
    fs::write(&file, "old").unwrap();
    env.ok(&["export", "--sqlite", file.to_str().unwrap(), "--force"]);
    assert!(
        fs::metadata(&file).unwrap().len() > 3,
        "a regular file is replaced"
    );
}
