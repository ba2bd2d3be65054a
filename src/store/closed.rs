//! A stand-in for a store that is closed while the disk is full: every operation fails with
//! [`StoreError::NoSpace`]. The supervisor holds it between closing the embedded store (which
//! keeps failing once a write failed) and opening it again.

use super::{
    Config, ConfigKey, Counts, FailOrDone, FailResult, Job, JobState, JobStore, ListOrder,
    ListPage, Millis, NewJob, PurgeStep, RunEnd, RunOutput, StoreError, TurnOutcome, VerifyReport,
};

/// The store while it is closed (see the module).
pub struct Closed;

fn closed<T>() -> Result<T, StoreError> {
    Err(StoreError::NoSpace)
}

impl JobStore for Closed {
    fn flush(&self) -> Result<(), StoreError> {
        closed()
    }
    fn enqueue(
        &self,
        _: &[NewJob],
        _: &Config,
        _: Millis,
        _: Option<&str>,
    ) -> Result<(), StoreError> {
        closed()
    }
    fn stage(&self, _: &str, _: &[NewJob], _: &Config, _: Millis) -> Result<(), StoreError> {
        closed()
    }
    fn publish(&self, _: &str, _: Millis) -> Result<u64, StoreError> {
        closed()
    }
    fn discard(&self, _: &str) -> Result<u64, StoreError> {
        closed()
    }
    fn discard_unpublished(&self) -> Result<u64, StoreError> {
        closed()
    }
    fn is_applied(&self, _: &str) -> Result<bool, StoreError> {
        closed()
    }
    fn reserve(&self, _: &str, _: Millis) -> Result<Option<Job>, StoreError> {
        closed()
    }
    fn reserve_id(&self, _: &str, _: &str, _: Millis) -> Result<Option<Job>, StoreError> {
        closed()
    }
    fn finish_and_reserve(
        &self,
        _: &str,
        _: &RunEnd<'_>,
        _: &str,
        _: Millis,
    ) -> Result<(FailOrDone, Option<Job>), StoreError> {
        closed()
    }
    fn finish_and_reserve_batch(
        &self,
        _: &[(&str, RunEnd<'_>)],
        _: &[&str],
        _: Millis,
    ) -> Result<TurnOutcome, StoreError> {
        closed()
    }
    fn finish(&self, _: &str, _: &RunEnd<'_>, _: Millis) -> Result<FailOrDone, StoreError> {
        closed()
    }
    fn set_pgid(&self, _: &str, _: i32) -> Result<(), StoreError> {
        closed()
    }
    fn release(&self, _: &str, _: Millis) -> Result<Job, StoreError> {
        closed()
    }
    fn dlq_retry(&self, _: &str, _: Millis, _: Option<&str>) -> Result<Job, StoreError> {
        closed()
    }
    fn put_output(&self, _: &str, _: &RunOutput) -> Result<(), StoreError> {
        closed()
    }
    fn output(&self, _: &str, _: u32) -> Result<Option<RunOutput>, StoreError> {
        closed()
    }
    fn config_set(&self, _: ConfigKey, _: u64, _: Option<&str>) -> Result<(), StoreError> {
        closed()
    }
    fn config(&self) -> Result<Config, StoreError> {
        closed()
    }
    fn forget_applied(&self) -> Result<(), StoreError> {
        closed()
    }
    fn recover_interrupted(
        &self,
        _: &str,
        _: u64,
        _: Millis,
    ) -> Result<Vec<FailResult>, StoreError> {
        closed()
    }
    fn get(&self, _: &str) -> Result<Option<Job>, StoreError> {
        closed()
    }
    fn list(&self, _: Option<JobState>, _: usize, _: usize) -> Result<Vec<Job>, StoreError> {
        closed()
    }
    fn list_page(
        &self,
        _: &[JobState],
        _: ListOrder,
        _: Option<&[u8]>,
        _: usize,
        _: Millis,
    ) -> Result<ListPage, StoreError> {
        closed()
    }
    fn all_jobs(&self) -> Box<dyn Iterator<Item = Result<Job, StoreError>> + '_> {
        Box::new(std::iter::once(closed()))
    }
    fn counts(&self) -> Result<Counts, StoreError> {
        closed()
    }
    fn next_wakeup(&self) -> Result<Option<Millis>, StoreError> {
        closed()
    }
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        closed()
    }
    fn cancel(&self, _: &str, _: Millis) -> Result<Job, StoreError> {
        closed()
    }
    fn purge(
        &self,
        _: JobState,
        _: Millis,
        _: Option<&str>,
        _: usize,
    ) -> Result<PurgeStep, StoreError> {
        closed()
    }
    fn remove(&self, _: &str) -> Result<Job, StoreError> {
        closed()
    }
}
