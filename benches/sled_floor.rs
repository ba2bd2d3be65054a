//! What sled itself costs to take a million jobs, without queuectl: the floor under a bulk
//! enqueue into the embedded store.
//!
//! Run: `cargo bench --bench sled_floor` (about a minute; `QUEUECTL_FLOOR_JOBS=N` for another
//! count). The database lives under `QUEUECTL_BENCH_DIR` (default: `target`); keep it off
//! tmpfs. It prints one line per layout, each the wall time of writing N entries, 1,000 per
//! write, keys in increasing order (the cheapest order for sled), values of 150 bytes (about
//! a short job's record), with sled's 8 MiB cache as in the store, and a final flush:
//!
//! - `one tree`: one entry per job, `Tree::apply_batch` (no transaction): the least any layout
//!   that keeps each job as an entry can pay;
//! - `record + index, one transaction`: the record and its 24-byte queue-order key in two
//!   trees, committed together: what a job needs to be both found by id and reserved in order
//!   (queuectl's `pending` and `due`).
//!
//! Then the store of the second layout is opened and closed again, four times (the first open
//! replays the log and writes sled's snapshot; the last three, the median printed, are what
//! every later command pays): the floor under a direct command on a store of that size.
//!
//! sled splits a leaf at 16 entries and rewrites the parent index node (up to 256 keys) into
//! its log at every split, so the cost is per entry, not per byte: one entry costs about
//! 10 µs here, so a million jobs stored as two entries each cannot be written in 10 s.
use std::time::Instant;

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

const CHUNK: u64 = 1_000;

fn key(n: u64) -> [u8; 26] {
    // The shape of a ULID: 26 bytes, increasing.
    let mut k = [b'0'; 26];
    let digits = format!("{n:026}");
    k.copy_from_slice(digits.as_bytes());
    k
}

fn main() {
    let jobs: u64 = std::env::var("QUEUECTL_FLOOR_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let base = std::env::var_os("QUEUECTL_BENCH_DIR").unwrap_or_else(|| "target".into());
    std::fs::create_dir_all(&base).expect("create the bench directory");
    let record = [7u8; 150];
    for layout in ["one tree", "record + index, one transaction"] {
        let dir = tempfile::Builder::new()
            .prefix("bench-sled-floor-")
            .tempdir_in(&base)
            .expect("create a temporary directory");
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .expect("open sled");
        let records = db.open_tree("pending").expect("open a tree");
        let index = db.open_tree("due").expect("open a tree");
        let start = Instant::now();
        for first in (0..jobs).step_by(CHUNK as usize) {
            let last = (first + CHUNK).min(jobs);
            if layout == "one tree" {
                let mut batch = sled::Batch::default();
                for n in first..last {
                    batch.insert(&key(n)[..], &record[..]);
                }
                records.apply_batch(batch).expect("write");
            } else {
                (&records, &index)
                    .transaction(|(r, i)| {
                        for n in first..last {
                            r.insert(&key(n)[..], &record[..])?;
                            let mut order = [0u8; 24];
                            order[16..].copy_from_slice(&n.to_be_bytes());
                            i.insert(&order[..], &key(n)[..])?;
                        }
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .expect("write");
            }
        }
        db.flush().expect("flush");
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{layout}: {jobs} jobs in {secs:.2} s ({:.1} µs per job)",
            secs * 1e6 / jobs as f64
        );
        drop((records, index, db));
        if layout != "one tree" {
            reopen(dir.path(), jobs);
        }
    }
}

/// Opens and closes the store at `path` four times; prints the median of the last three.
fn reopen(path: &std::path::Path, jobs: u64) {
    let mut opens = Vec::new();
    let mut closes = Vec::new();
    for _ in 0..4 {
        let start = Instant::now();
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .expect("open sled");
        let trees = [
            db.open_tree("pending").expect("open a tree"),
            db.open_tree("due").expect("open a tree"),
        ];
        let opened = start.elapsed();
        drop((trees, db));
        opens.push(opened);
        closes.push(start.elapsed() - opened);
    }
    let median = |v: &[std::time::Duration]| {
        let mut last: Vec<_> = v[1..].to_vec();
        last.sort();
        last[1].as_secs_f64() * 1e3
    };
    println!(
        "open the store of {jobs} jobs (record + index): {:.0} ms, close: {:.0} ms (median of 3, after a first open of {:.0} ms)",
        median(&opens),
        median(&closes),
        opens[0].as_secs_f64() * 1e3
    );
}
