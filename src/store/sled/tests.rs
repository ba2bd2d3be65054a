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

/// A job with every field set (and one character outside ASCII), for the golden records.
fn golden_job() -> Job {
    Job {
        id: "j1".into(),
        command: "echo é".into(),
        state: JobState::Failed,
        attempts: 2,
        max_retries: 3,
        created_at: 1_000,
        updated_at: 2_000,
        available_at: Some(3_000),
        locked_by: None,
        locked_at: None,
        last_error: Some("exit code 1".into()),
        priority: -5,
        timeout_ms: Some(60_000),
        seq: 42,
        pgid: None,
        runs: 2,
        cwd: Some("/tmp".into()),
        env: vec![("A".into(), "1".into())],
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The job record of format version 1 (16 fields, before `cwd` and `env`), byte for byte: a
/// MessagePack array in field order.
const GOLDEN_JOB_V1: &str = "dc0010 a26a31 a76563686f20c3a9 a66661696c6564 02 03 cd03e8 cd07d0
    cd0bb8 c0 c0 ab6578697420636f64652031 fb cdea60 2a c0 02";

/// The job record as this version writes it (format version 2: `cwd` and `env` appended), byte
/// for byte. A change here is a change of the on-disk format: bump `keys::SCHEMA_VERSION` and
/// add an upgrade step to `SledStore::check_schema`.
const GOLDEN_JOB_V2: &str = "dc0012 a26a31 a76563686f20c3a9 a66661696c6564 02 03 cd03e8 cd07d0
    cd0bb8 c0 c0 ab6578697420636f64652031 fb cdea60 2a c0 02 a42f746d70 91 92 a141 a131";

/// The output record of one attempt, byte for byte.
const GOLDEN_OUTPUT: &str = "96 02 81 a854696d65644f7574 91 05 07 09 c4026869 c401ff";

fn golden_output() -> RunOutput {
    RunOutput {
        run: 2,
        outcome: crate::model::Outcome::TimedOut { after_ms: 5 },
        finished_at: 7,
        duration_ms: 9,
        stdout: b"hi".to_vec(),
        stderr: vec![0xff],
    }
}

#[test]
fn stored_records_are_byte_for_byte_the_documented_format() {
    assert_eq!(
        hex(&encode(&golden_job()).unwrap()),
        hex(&unhex(GOLDEN_JOB_V2))
    );
    let back: Job = decode("failed", &unhex(GOLDEN_JOB_V2)).unwrap();
    assert_eq!(back, golden_job());
    assert_eq!(
        hex(&encode(&golden_output()).unwrap()),
        hex(&unhex(GOLDEN_OUTPUT))
    );
    let back: RunOutput = decode("output", &unhex(GOLDEN_OUTPUT)).unwrap();
    assert_eq!(back, golden_output());
}

#[test]
fn version_1_records_decode_with_defaults_for_the_new_fields() {
    let old: Job = decode("failed", &unhex(GOLDEN_JOB_V1)).unwrap();
    let mut want = golden_job();
    want.cwd = None;
    want.env = Vec::new();
    assert_eq!(old, want);
}

/// Writes, with sled itself, a store as version 1 of queuectl left it: one failed job waiting
/// for its retry, no counters.
fn write_version_1_store(path: &std::path::Path) {
    let db = ::sled::Config::new().path(path).open().unwrap();
    db.open_tree("failed")
        .unwrap()
        .insert("j1", unhex(GOLDEN_JOB_V1))
        .unwrap();
    db.open_tree("scheduled")
        .unwrap()
        .insert(
            &keys::scheduled_key(3_000, 42)[..],
            keys::index_value(JobState::Failed, "j1"),
        )
        .unwrap();
    db.open_tree("meta")
        .unwrap()
        .insert("schema_version", &1u32.to_be_bytes())
        .unwrap();
    db.flush().unwrap();
}

#[test]
fn a_version_1_store_is_upgraded_when_opened() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("db");
    write_version_1_store(&path);
    {
        let s = SledStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), Some(keys::SCHEMA_VERSION));
        let c = s.counts().unwrap();
        assert_eq!((c.failed, c.total()), (1, 1));
        let report = s.verify().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let j = s.get("j1").unwrap().unwrap();
        assert_eq!((j.cwd, j.env), (None, vec![]));
        assert_eq!(s.next_wakeup().unwrap(), Some(3_000));
        s.flush().unwrap();
    }
    // Reopened: already upgraded, and the queue works on.
    let s = SledStore::open(&path).unwrap();
    let j = s.reserve("w", 3_000).unwrap().unwrap();
    assert_eq!((j.id.as_str(), j.runs), ("j1", 3));
    complete(&s, "j1");
    assert_eq!(s.counts().unwrap().completed, 1);
    let report = s.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn complete(s: &SledStore, id: &str) {
    s.complete(id, 4_000).unwrap();
}

#[test]
fn a_store_from_a_newer_version_is_refused_and_left_alone() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("db");
    {
        let db = ::sled::Config::new().path(&path).open().unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("schema_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(&path).err().expect("refused");
    assert!(
        matches!(err, StoreError::Schema { found: 99, expected } if expected == keys::SCHEMA_VERSION),
        "{err}"
    );
    // Left as it was: opening again finds the same version (this waits for the first
    // attempt's sled threads to let go, as any later owner would).
    let again = SledStore::open(&path).err().expect("refused again");
    assert!(
        matches!(again, StoreError::Schema { found: 99, .. }),
        "{again}"
    );
}

#[test]
fn verify_finds_a_counter_that_disagrees() {
    let dir = TempDir::new().unwrap();
    let s = SledStore::open(&dir.path().join("db")).unwrap();
    s.enqueue(&[new_job("a")], &Config::default(), 0, None)
        .unwrap();
    s.counts
        .insert(keys::count_key(JobState::Pending), &5u64.to_be_bytes())
        .unwrap();
    let report = s.verify().unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("pending counter"),
        "{:?}",
        report.problems
    );
}

/// A crash after the one step of publication (the batch marked published) but before all its
/// jobs moved: the next open moves the rest, so all of the batch is there.
#[test]
fn a_publication_cut_short_by_a_crash_is_finished_by_the_next_open() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("db");
    let n: usize = 1_010;
    {
        let s = SledStore::open(&path).unwrap();
        let jobs: Vec<NewJob> = (0..n).map(|i| new_job(&format!("j{i:06}"))).collect();
        for chunk in jobs.chunks(1000) {
            s.stage("REQ", chunk, &Config::default(), 5).unwrap();
        }
        // What `publish` does, up to one chunk moved: then the process dies.
        s.batches.insert("REQ", &[keys::BATCH_PUBLISHED]).unwrap();
        s.applied.insert("REQ", &[]).unwrap();
        let chunks = s.chunk_keys("REQ").unwrap();
        assert_eq!(chunks.len(), n.div_ceil(CHUNK_JOBS));
        s.tx(|t| {
            let value = t.chunks().remove(&chunks[0])?.unwrap();
            let records = keys::decode_chunk_value(&value).unwrap();
            for record in &records {
                let job: Job = decode(keys::CHUNKS, record).unwrap();
                t.state(JobState::Pending)
                    .insert(job.id.as_bytes(), *record)?;
                t.index(&job, 5)?;
            }
            t.count(JobState::Pending, records.len() as i64)?;
            Ok(())
        })
        .unwrap();
        s.flush().unwrap();
    }
    let s = SledStore::open(&path).unwrap();
    assert_eq!(s.counts().unwrap().pending, n as u64);
    assert_eq!(s.discard_unpublished().unwrap(), 0);
    assert!(s.batches.is_empty() && s.chunks.is_empty());
    let report = s.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.jobs, n as u64);
    assert_eq!(s.reserve("w", 5).unwrap().unwrap().id, "j000000");
}

/// A version 2 store left with jobs staged one entry each (a bulk enqueue cut short) opens as
/// version 3 with them in chunks: a published batch is then moved whole, an unpublished one
/// dropped by the next owner, and its ids are free.
#[test]
fn staged_jobs_of_version_2_move_into_chunks() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("db");
    {
        let s = SledStore::open(&path).unwrap();
        s.enqueue(&[new_job("live")], &Config::default(), 0, None)
            .unwrap();
        let cfg = Config::default();
        for (batch, count, state) in [
            ("PUB", 1_500, keys::BATCH_PUBLISHED),
            ("HALF", 3, keys::BATCH_STAGING),
        ] {
            for i in 0..count {
                let job = new_record(&new_job(&format!("{batch}-{i:05}")), &cfg, 7, i);
                let record = encode(&job).unwrap();
                s.staged
                    .insert(job.id.as_bytes(), keys::staged_value(batch, &record))
                    .unwrap();
            }
            s.batches.insert(batch, &[state]).unwrap();
        }
        s.applied.insert("PUB", &[]).unwrap();
        s.meta
            .insert(keys::SCHEMA_VERSION_KEY, &2u32.to_be_bytes())
            .unwrap();
        s.flush().unwrap();
    }
    let s = SledStore::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), Some(keys::SCHEMA_VERSION));
    assert!(s.staged.is_empty());
    assert_eq!(s.counts().unwrap().pending, 1 + 1_500);
    assert_eq!(
        s.get("PUB-01499").unwrap().unwrap().state,
        JobState::Pending
    );
    assert!(s.get("HALF-00000").unwrap().is_none());
    assert_eq!(s.discard_unpublished().unwrap(), 3);
    s.enqueue(&[new_job("HALF-00000")], &Config::default(), 8, None)
        .unwrap();
    let report = s.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.jobs, 1 + 1_500 + 1);
}

/// A bulk enqueue stored by a second thread (as a supervisor does) while the owner's thread
/// enqueues jobs with the same ids: each id ends up in the store once, whoever took it first.
#[test]
fn a_bulk_enqueue_beside_enqueues_lets_no_id_in_twice() {
    let dir = TempDir::new().unwrap();
    let s = SledStore::open(&dir.path().join("db")).unwrap();
    let ids: Vec<String> = (0..4_000).map(|i| format!("j{i:05}")).collect();
    let cfg = Config::default();
    let staged = std::thread::scope(|scope| {
        let bulk = scope.spawn(|| {
            let mut staged = 0;
            for chunk in ids.chunks(100) {
                let jobs: Vec<NewJob> = chunk.iter().map(|id| new_job(id)).collect();
                match s.stage("b1", &jobs, &cfg, 0) {
                    Ok(()) => staged += jobs.len(),
                    // Some id of the chunk was taken by the other thread first.
                    Err(StoreError::Duplicate(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            s.publish("b1", 0).unwrap();
            staged
        });
        let mut enqueued = 0;
        for id in ids.iter().rev() {
            match s.enqueue(&[new_job(id)], &cfg, 0, None) {
                Ok(()) => enqueued += 1,
                Err(StoreError::Duplicate(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        let staged = bulk.join().unwrap();
        assert!(staged + enqueued <= ids.len(), "{staged} + {enqueued}");
        staged
    });
    let report = s.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(s.counts().unwrap().pending, report.jobs);
    assert!(report.jobs >= staged as u64);
}
