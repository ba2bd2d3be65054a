//! Tests of the sled backend: the conformance suite with a sled harness, then what only sled has.

use super::*;
use crate::store::conformance::{conformance_tests, Harness};
use tempfile::TempDir;

/// A sled store in its own temporary directory, opened again at the same path.
struct SledHarness {
    dir: TempDir,
}

impl SledHarness {
    fn new() -> SledHarness {
        SledHarness {
            dir: TempDir::new().expect("temporary directory"),
        }
    }
}

impl Harness for SledHarness {
    fn open(&mut self) -> Box<dyn JobStore> {
        Box::new(SledStore::open(&self.dir.path().join("db")).expect("open the sled store"))
    }
}

conformance_tests!(SledHarness::new());

fn new_job(id: &str) -> NewJob {
    NewJob {
        id: id.to_string(),
        command: format!("echo {id}"),
        max_retries: None,
        priority: 0,
        run_at: None,
        timeout_ms: None,
        cwd: None,
        env: Vec::new(),
    }
}

#[test]
fn scheduled_jobs_move_to_due_when_promoted() {
    let dir = TempDir::new().unwrap();
    let s = SledStore::open(&dir.path().join("db")).unwrap();
    let mut later = new_job("later");
    later.run_at = Some(1_000);
    s.enqueue(&[later, new_job("now")], &Config::default(), 0, None)
        .unwrap();
    assert!(s.has_due().unwrap());
    assert_eq!(s.promote_due(999).unwrap(), 0);
    assert_eq!(s.reserve("w", 0).unwrap().unwrap().id, "now");
    assert!(!s.has_due().unwrap());
    assert_eq!(s.promote_due(1_000).unwrap(), 1);
    assert!(s.has_due().unwrap());
    assert_eq!(s.next_wakeup().unwrap(), None);
}
