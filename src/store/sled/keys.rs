//! Tree names and the byte layout of every key and index value the store writes.
//!
//! Every integer is fixed-width big-endian so that sled's lexicographic byte order is the numeric
//! order we want. The layouts, byte by byte:
//!
//! ```text
//! state trees   pending | processing | completed | failed | dead
//!               key   = job id (UTF-8)          value = Job record (MessagePack array in
//!                       the field order of model::Job; new fields last)
//!
//! due           jobs that may run now, in the order they run
//!               key   = [0..8)   priority, as (p XOR 1<<63) then bit-inverted: higher sorts first
//!                       [8..16)  available_at, ms since epoch: earlier first (the Node.js queuectl's order)
//!                       [16..24) seq, the job's enqueue sequence: a unique tie-break
//!               value = [0] state tag (STATE_TAG), [1..) job id
//!
//! scheduled     pending jobs with a future run_at and failed jobs waiting for their retry
//!               key   = [0..8) available_at  [8..16) seq
//!               value = same as `due`
//!
//! output        the captured output of each attempt
//!               key   = [0..2) id length (u16)  [2..2+len) id  [2+len..+4) run number (u32)
//!               value = RunOutput (MessagePack array)
//!
//! counts        key = state name (UTF-8)       value = u64: how many jobs are in that state,
//!                                                changed in the transaction of every transition
//!
//! staged_chunks the jobs of a bulk enqueue not yet moved to `pending` (invisible to reads and
//!               reservation), one entry per chunk staged
//!               key   = [0] batch id length (u8)  [1..1+len) batch id  [1+len..+4) chunk number (u32)
//!               value = per job: [0..4) record length (u32)  [4..4+len) Job record
//!
//! staged        (version 2 only; emptied by the upgrade to 3) one entry per staged job
//!               key   = job id (UTF-8)
//!               value = [0] batch id length (u8)  [1..1+len) batch id  [1+len..) Job record
//!
//! batches       key = batch id (UTF-8)  value = [0] BATCH_STAGING or BATCH_PUBLISHED: a
//!               published batch's jobs are being moved to `pending` (resumed by `open`)
//!
//! config        key = config key name (UTF-8)  value = decimal text
//! meta          key = name (UTF-8)             value = per key (schema_version: u32)
//! applied       key = spool request id (ULID)  value = empty: the request's effect is stored
//! ```

use crate::model::{JobState, Millis};

pub const DUE: &str = "due";
pub const SCHEDULED: &str = "scheduled";
pub const COUNTS: &str = "counts";
pub const STAGED: &str = "staged";
pub const CHUNKS: &str = "staged_chunks";
pub const BATCHES: &str = "batches";

/// `batches` value: jobs are still being staged.
pub const BATCH_STAGING: u8 = 0;
/// `batches` value: published; the move of its jobs to `pending` may be unfinished.
pub const BATCH_PUBLISHED: u8 = 1;
pub const OUTPUT: &str = "output";
pub const CONFIG: &str = "config";
pub const META: &str = "meta";
pub const APPLIED: &str = "applied";

/// Key in `meta` holding the on-disk format version.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";
/// The on-disk format this build reads and writes.
///
/// - 1: the state trees, `due`, `scheduled`, `output`, `config`, `meta`, `applied`.
/// - 2: adds `counts`, `staged` and `batches`; Job records may end with `cwd` and `env` (version 1 records, without
///   them, still decode). Opening a version 1 store counts its jobs once and writes version 2.
/// - 3: a bulk enqueue stages its jobs in `staged_chunks`, one entry per chunk, instead of one
///   `staged` entry per job. Opening a version 2 store moves what `staged` holds into chunks.
pub const SCHEMA_VERSION: u32 = 3;

/// The tree that holds jobs in `state`.
pub fn state_tree_name(state: JobState) -> &'static str {
    state.as_str()
}

/// Key of the counter of `state` in `counts`.
pub fn count_key(state: JobState) -> &'static str {
    state.as_str()
}

/// Reads a counter back; `None` if it is malformed.
pub fn decode_count(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// Value of a `staged` entry: its batch, then the job record.
pub fn staged_value(batch: &str, record: &[u8]) -> Vec<u8> {
    let len = u8::try_from(batch.len()).unwrap_or(u8::MAX);
    let mut v = Vec::with_capacity(1 + batch.len() + record.len());
    v.push(len);
    v.extend_from_slice(&batch.as_bytes()[..usize::from(len)]);
    v.extend_from_slice(record);
    v
}

/// Reads a `staged` value back: (batch id, job record); `None` if it is malformed.
pub fn decode_staged_value(v: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = v.split_first()?;
    let len = usize::from(*len);
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The key prefix of every chunk of `batch` in `staged_chunks` (a batch id is 1 to 255 bytes).
pub fn chunk_prefix(batch: &str) -> Vec<u8> {
    let len = u8::try_from(batch.len()).unwrap_or(u8::MAX);
    let mut k = Vec::with_capacity(1 + batch.len() + 4);
    k.push(len);
    k.extend_from_slice(&batch.as_bytes()[..usize::from(len)]);
    k
}

/// Key of chunk `n` of `batch`: chunks sort in the order they were staged.
pub fn chunk_key(batch: &str, n: u32) -> Vec<u8> {
    let mut k = chunk_prefix(batch);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The chunk number a chunk key ends with; `None` if it is malformed.
pub fn chunk_number(key: &[u8]) -> Option<u32> {
    let tail = key.len().checked_sub(4).map(|at| &key[at..])?;
    Some(u32::from_be_bytes(tail.try_into().ok()?))
}

/// Value of a chunk: every record, each after its length.
pub fn chunk_value<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut v = Vec::new();
    for r in records {
        let len = u32::try_from(r.len()).unwrap_or(u32::MAX);
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&r[..len as usize]);
    }
    v
}

/// The records of a chunk value; `None` if it is malformed.
pub fn decode_chunk_value(mut v: &[u8]) -> Option<Vec<&[u8]>> {
    let mut records = Vec::new();
    while !v.is_empty() {
        let len = read_u32(v)? as usize;
        let rest = &v[4..];
        if rest.len() < len {
            return None;
        }
        records.push(&rest[..len]);
        v = &rest[len..];
    }
    Some(records)
}

fn read_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// The tag that names the state tree of an indexed job.
fn state_tag(state: JobState) -> u8 {
    match state {
        JobState::Pending => 0,
        JobState::Processing => 1,
        JobState::Completed => 2,
        JobState::Failed => 3,
        JobState::Dead => 4,
    }
}

fn tag_state(tag: u8) -> Option<JobState> {
    JobState::ALL.into_iter().find(|s| state_tag(*s) == tag)
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Key of a job in the `due` tree.
pub fn due_key(priority: i64, available_at: Millis, seq: u64) -> [u8; 24] {
    let prio = !((priority as u64) ^ (1 << 63));
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&be(prio));
    k[8..16].copy_from_slice(&be(available_at));
    k[16..].copy_from_slice(&be(seq));
    k
}

/// Key of a job in the `scheduled` tree.
pub fn scheduled_key(available_at: Millis, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&be(available_at));
    k[8..].copy_from_slice(&be(seq));
    k
}

/// The time a `scheduled` key is due.
pub fn scheduled_at(key: &[u8]) -> Option<Millis> {
    read_u64(key)
}

/// Value of an index entry: which state tree holds the job, and its id.
pub fn index_value(state: JobState, id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + id.len());
    v.push(state_tag(state));
    v.extend_from_slice(id.as_bytes());
    v
}

/// Reads an index value back; `None` if it is malformed.
pub fn decode_index_value(v: &[u8]) -> Option<(JobState, &str)> {
    let (tag, id) = v.split_first()?;
    Some((tag_state(*tag)?, std::str::from_utf8(id).ok()?))
}

/// Prefix of every `output` key of one job.
pub fn output_prefix(id: &str) -> Vec<u8> {
    let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(2 + id.len() + 4);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// Key of the output of run `run` of job `id`.
pub fn output_key(id: &str, run: u32) -> Vec<u8> {
    let mut k = output_prefix(id);
    k.extend_from_slice(&run.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn due_order_is_priority_desc_then_time_then_seq(
            a in (any::<i64>(), any::<u64>(), any::<u64>()),
            b in (any::<i64>(), any::<u64>(), any::<u64>()),
        ) {
            let ka = due_key(a.0, a.1, a.2);
            let kb = due_key(b.0, b.1, b.2);
            let want = b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2));
            prop_assert_eq!(ka.cmp(&kb), want);
        }

        #[test]
        fn scheduled_order_is_time_then_seq(a in (any::<u64>(), any::<u64>()), b in (any::<u64>(), any::<u64>())) {
            prop_assert_eq!(scheduled_key(a.0, a.1).cmp(&scheduled_key(b.0, b.1)), a.cmp(&b));
            prop_assert_eq!(scheduled_at(&scheduled_key(a.0, a.1)), Some(a.0));
        }
    }

    #[test]
    fn chunks_round_trip_and_sort_in_staging_order() {
        let records: [&[u8]; 3] = [b"one", b"", b"three"];
        let v = chunk_value(records);
        assert_eq!(decode_chunk_value(&v).unwrap(), records);
        assert_eq!(decode_chunk_value(&v[..v.len() - 1]), None, "cut short");
        assert_eq!(decode_chunk_value(&[]).unwrap(), Vec::<&[u8]>::new());
        let (k2, k10) = (chunk_key("B", 2), chunk_key("B", 10));
        assert!(k2 < k10 && k2.starts_with(&chunk_prefix("B")));
        assert_eq!(chunk_number(&k10), Some(10));
        assert!(!chunk_key("BB", 0).starts_with(&chunk_prefix("B")));
    }

    #[test]
    fn index_values_round_trip() {
        for st in [JobState::Pending, JobState::Failed] {
            let v = index_value(st, "job-1");
            assert_eq!(decode_index_value(&v), Some((st, "job-1")));
        }
        assert_eq!(decode_index_value(&[]), None);
        assert_eq!(decode_index_value(&[9, b'x']), None);
    }

    #[test]
    fn output_keys_of_one_job_share_a_prefix_and_sort_by_run() {
        let p = output_prefix("ab");
        assert!(output_key("ab", 1).starts_with(&p));
        assert!(!output_key("abc", 1).starts_with(&p));
        assert!(output_key("ab", 2) > output_key("ab", 1));
        assert!(output_key("ab", 256) > output_key("ab", 255));
    }
}
