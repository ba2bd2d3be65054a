//! Tidy: the architecture's boundaries, checked by reading `src/`. Each dependency that could
//! leak stays in its module: the sled crate in `src/store/sled/`, rusqlite in `src/export.rs`, a
//! PostgreSQL client in `src/store/postgres/`, starting processes and sending signals in
//! `src/worker/`. And every source file starts with a `//!` line saying what it owns.
//!
//! Comment lines are not code and are skipped; the checker itself is tested on synthetic input
//! below, so that it demonstrably fails on a stray use.

use std::path::{Path, PathBuf};

/// A pattern that may only appear in code under one of `allowed` (path prefixes, from the
/// repository root).
struct Rule {
    what: &'static str,
    /// Does this (comment-free, trimmed) line contain the forbidden use?
    found: fn(&str) -> bool,
    allowed: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        what: "the sled crate",
        found: |line| crate_path(line, "sled") || line.contains("extern crate sled"),
        allowed: &["src/store/sled/"],
    },
    Rule {
        what: "rusqlite",
        found: |line| has_word(line, "rusqlite"),
        allowed: &["src/export.rs"],
    },
    Rule {
        what: "a PostgreSQL client",
        found: |line| {
            crate_path(line, "postgres")
                || has_word(line, "tokio_postgres")
                || has_word(line, "sqlx")
        },
        allowed: &["src/store/postgres/"],
    },
    Rule {
        what: "std::process::Command",
        found: |line| {
            line.contains("Command::new(")
                || line.contains("process::Command")
                || (line.starts_with("use std::process::") && has_word(line, "Command"))
        },
        allowed: &["src/worker/"],
    },
    Rule {
        what: "sending a signal",
        found: |line| {
            line.contains("kill(")
                || line.contains("killpg")
                || line.contains("Signal::")
                || line.contains("raise(")
        },
        // The crash points kill their own process on purpose (a simulated crash in tests).
        allowed: &["src/worker/", "src/crashpoint.rs"],
    },
];

/// Whether `line` names `krate` as a path root (`sled::Db`, `use sled;`), not as the module of
/// ours that wraps it (`store::sled::SledStore`).
fn crate_path(line: &str, krate: &str) -> bool {
    line.match_indices(krate).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = &line[i + krate.len()..];
        let starts_path = !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        starts_path && (after.starts_with("::") || (line.starts_with("use ") && after == ";"))
    })
}

/// Whether `word` appears in `line` as a whole identifier.
fn has_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// The violations in one file, `path` relative to the repository root with `/` separators.
fn violations(path: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    if !text.starts_with("//!") {
        found.push(format!("{path}: does not start with a `//!` line"));
    }
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with("//") {
            continue;
        }
        for rule in RULES {
            if (rule.found)(line) && !rule.allowed.iter().any(|a| path.starts_with(a)) {
                found.push(format!(
                    "{path}:{}: {} outside {}: {line}",
                    n + 1,
                    rule.what,
                    rule.allowed.join(", ")
                ));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read src/").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_source_tree_is_tidy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 20, "found only {files:?}");
    let mut all = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        all.extend(violations(&rel, &text));
    }
    assert!(all.is_empty(), "tidy:\n{}", all.join("\n"));
}

#[test]
fn the_checker_catches_each_stray_use() {
    let stray = [
        ("src/cli/commands.rs", "let db = sled::open(path)?;"),
        ("src/owner.rs", "use sled;"),
        ("src/store/mod.rs", "fn f(e: sled::Error) {}"),
        ("src/store/conformance.rs", "use rusqlite::Connection;"),
        (
            "src/cli/commands.rs",
            "let c = postgres::Client::connect(url)?;",
        ),
        ("src/supervisor/mod.rs", "let c = Command::new(\"sh\");"),
        ("src/cli/client.rs", "use std::process::{Child, Command};"),
        ("src/owner.rs", "killpg(pgid, sig)?;"),
        ("src/supervisor/mod.rs", "let _ = child.kill();"),
        ("src/owner.rs", "kill_group(pgid, Signal::SIGKILL)?;"),
    ];
    for (path, line) in stray {
        let text = format!("//! A module.\n\n{line}\n");
        assert_eq!(violations(path, &text).len(), 1, "{path}: {line}");
    }
    assert_eq!(
        violations("src/model.rs", "use std::fmt;\n"),
        vec!["src/model.rs: does not start with a `//!` line".to_string()]
    );
}

#[test]
fn the_checker_allows_each_module_its_own() {
    let fine = [
        ("src/store/sled/mod.rs", "let db = sled::open(path)?;"),
        ("src/store/sled/keys.rs", "use sled::IVec;"),
        ("src/owner.rs", "use crate::store::sled::SledStore;"),
        ("src/export.rs", "use rusqlite::Connection;"),
        ("src/store/postgres/mod.rs", "use postgres::Client;"),
        ("src/worker/spawn.rs", "Command::new(SHELL)"),
        ("src/worker/kill.rs", "killpg(group, signal)"),
        ("src/crashpoint.rs", "raise(Signal::SIGKILL)"),
        ("src/cli/args.rs", "// sled::open is not called here"),
        ("src/cli/args.rs", "#[command(subcommand)]"),
        ("src/cli/args.rs", "let sledge = 1;"),
    ];
    for (path, line) in fine {
        let text = format!("//! A module.\n\n{line}\n");
        assert_eq!(
            violations(path, &text),
            Vec::<String>::new(),
            "{path}: {line}"
        );
    }
}

/// The newest Rust our own code needs: `std::io::pipe` (used by tests) is stable since 1.87.
const OWN_CODE_NEEDS: (u32, u32) = (1, 87);

fn version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// `rust-version` in Cargo.toml is what building and testing really need: no older than our
/// own code needs, nor than any locked dependency (dev-dependencies included) declares.
#[test]
fn rust_version_is_what_the_code_and_its_dependencies_need() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version"))
        .and_then(|rest| {
            version(
                rest.trim_start_matches([' ', '=', '"'])
                    .trim_end_matches('"'),
            )
        })
        .expect("Cargo.toml declares rust-version = \"X.Y\"");
    assert!(
        declared >= OWN_CODE_NEEDS,
        "rust-version {declared:?} is older than our code needs ({OWN_CODE_NEEDS:?})"
    );
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut newest = ((0, 0), String::new());
    for p in meta["packages"].as_array().unwrap() {
        if p["name"] == "queuectl" {
            continue;
        }
        if let Some(v) = p["rust_version"].as_str().and_then(version) {
            if v > newest.0 {
                newest = (v, format!("{} {}", p["name"], p["version"]));
            }
        }
    }
    assert!(
        declared >= newest.0,
        "rust-version {declared:?} is older than {} needs ({:?})",
        newest.1,
        newest.0
    );
    // Not needlessly new either: it is exactly the larger of the two.
    assert_eq!(declared, newest.0.max(OWN_CODE_NEEDS), "{}", newest.1);
}
