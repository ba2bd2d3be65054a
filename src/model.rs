//! Plain data types of the queue: [`Job`], [`JobState`], the enqueue specification ([`JobSpec`] ->
//! [`NewJob`]), configuration ([`Config`], [`ConfigKey`]), the outcome of one run and the retry
//! rule. Validation lives here; nothing in this module does I/O or reads the clock except
//! [`now_ms`].
//!
//! Times are milliseconds since the Unix epoch ([`Millis`]) inside the program and RFC 3339 UTC
//! with milliseconds (`2025-11-09T08:21:13.456Z`) wherever a person or another program reads them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// Longest accepted job id, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Errors in user-supplied data: every variant is an invalid input (exit status 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("invalid job JSON: {0}")]
    InvalidJson(String),
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("unknown state `{0}` (expected one of pending, processing, completed, failed, dead)")]
    UnknownState(String),
    #[error(
        "unknown config key `{0}` (expected one of max_retries, backoff_base, poll_interval_ms, retention_completed, retention_dead, lease_ms)"
    )]
    UnknownConfigKey(String),
    #[error("invalid value `{value}` for {key}: {reason}")]
    InvalidConfigValue {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid time `{0}`: expected RFC 3339, e.g. 2025-11-09T08:21:13Z")]
    InvalidTime(String),
    #[error("invalid duration `{0}`: expected seconds or a duration like 90s, 5m, 2h or 1d")]
    InvalidDuration(String),
}

/// The five states of a job's lifecycle (those of the Node.js queuectl).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Processing,
    Completed,
    Failed,
    Dead,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 5] = [
        JobState::Pending,
        JobState::Processing,
        JobState::Completed,
        JobState::Failed,
        JobState::Dead,
    ];

    /// Completed or dead: nothing more happens to the job unless someone retries it.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Completed | JobState::Dead)
    }

    /// The lower-case name used on the command line, in JSON and in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Processing => "processing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ModelError::UnknownState(s.to_string()))
    }
}

/// One job as stored: every column of the Node.js queuectl's `jobs` table plus what queuectl adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub command: String,
    pub state: JobState,
    /// Failed attempts so far (the retry rule counts these).
    pub attempts: u32,
    pub max_retries: u32,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// When the job may next run; `None` once it is completed or dead.
    pub available_at: Option<Millis>,
    pub locked_by: Option<String>,
    pub locked_at: Option<Millis>,
    pub last_error: Option<String>,
    /// Higher runs first.
    pub priority: i64,
    /// Kill the run's process group after this long.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Enqueue order, unique per job: ties in the availability index are broken by it.
    pub seq: u64,
    /// Process group of the running run (only while `processing`).
    #[serde(default)]
    pub pgid: Option<i32>,
    /// Runs started, successful or not: numbers the output of each run.
    #[serde(default)]
    pub runs: u32,
    /// Working directory the job runs in (absolute); `None`: the supervisor's.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables added to the supervisor's environment for this job, in order.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// The JSON a user reads (`list --json`, `show --json`): the Node.js queuectl's column names, RFC 3339 times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub command: String,
    pub state: JobState,
    pub attempts: u32,
    pub max_retries: u32,
    pub created_at: String,
    pub updated_at: String,
    pub available_at: Option<String>,
    pub locked_by: Option<String>,
    pub locked_at: Option<String>,
    pub last_error: Option<String>,
    pub priority: i64,
    /// Seconds, as given at enqueue.
    pub timeout: Option<f64>,
    /// Number of attempts started (each has its own output, see `queuectl logs`).
    pub runs: u32,
    /// Working directory the job runs in; `None`: the supervisor's.
    pub cwd: Option<String>,
    /// Variables added to the supervisor's environment for this job.
    pub env: std::collections::BTreeMap<String, String>,
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        JobView {
            id: j.id.clone(),
            command: j.command.clone(),
            state: j.state,
            attempts: j.attempts,
            max_retries: j.max_retries,
            created_at: format_ts(j.created_at),
            updated_at: format_ts(j.updated_at),
            available_at: j.available_at.map(format_ts),
            locked_by: j.locked_by.clone(),
            locked_at: j.locked_at.map(format_ts),
            last_error: j.last_error.clone(),
            priority: j.priority,
            timeout: j.timeout_ms.map(|ms| ms as f64 / 1000.0),
            runs: j.runs,
            cwd: j.cwd.clone(),
            env: j.env.iter().cloned().collect(),
        }
    }
}

impl Job {
    /// How many failed runs the retry rule allows before the job is dead: `max_retries`, at
    /// least one (a first failure of a job with `max_retries` 0 is already fatal).
    pub fn failures_allowed(&self) -> u32 {
        self.max_retries.max(1)
    }

    /// `runs 3, failures 2 of 3 allowed`: the one wording of attempts in every listing.
    pub fn attempts_summary(&self) -> String {
        format!(
            "runs {}, failures {} of {} allowed",
            self.runs,
            self.attempts,
            self.failures_allowed()
        )
    }
}

/// A job as a user writes it to `queuectl enqueue`. Unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub id: Option<String>,
    pub command: String,
    pub max_retries: Option<u32>,
    pub priority: Option<i64>,
    pub run_at: Option<String>,
    /// Seconds (a number) or a duration (`"5m"`); checked by [`JobSpec::validate`].
    pub delay: Option<serde_json::Value>,
    /// Seconds (a number) or a duration (`"2h"`); checked by [`JobSpec::validate`].
    pub timeout: Option<serde_json::Value>,
    /// Working directory; relative paths are resolved by the command that queues the job.
    pub cwd: Option<String>,
    /// Extra environment variables (an object of strings).
    pub env: Option<std::collections::BTreeMap<String, String>>,
}

/// A validated job, ready for the store: the id is fixed and every time is absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    pub id: String,
    pub command: String,
    /// `None`: take `max_retries` from the config when the job is stored.
    pub max_retries: Option<u32>,
    pub priority: i64,
    /// `None`: may run as soon as it is stored.
    pub run_at: Option<Millis>,
    pub timeout_ms: Option<u64>,
    /// Working directory (absolute); `None`: the supervisor's.
    pub cwd: Option<String>,
    /// Extra environment variables for the job.
    pub env: Vec<(String, String)>,
}

impl NewJob {
    /// Parses and validates one job given as JSON; `now` resolves `delay`, `fresh_id` names a
    /// job given without an id.
    pub fn from_json(
        text: &str,
        now: Millis,
        fresh_id: impl FnOnce() -> String,
    ) -> Result<NewJob, ModelError> {
        let text = text.trim();
        if !text.starts_with('{') {
            // serde reads a struct from an array too (`["id","cmd",null,...]`): a job is an
            // object, and anything else is refused with that reason (or the syntax error).
            let reason = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => "expected a JSON object, e.g. {\"command\":\"echo hi\"}".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(ModelError::InvalidJson(reason));
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let spec: JobSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let field = path.split('.').next().unwrap_or_default();
            match expected_type(field) {
                Some(what) if inner.is_data() => {
                    ModelError::InvalidJob(format!("`{field}` must be {what}"))
                }
                _ if path == "." || path.is_empty() => ModelError::InvalidJson(inner.to_string()),
                _ => ModelError::InvalidJson(format!("`{path}`: {inner}")),
            }
        })?;
        de.end()
            .map_err(|e| ModelError::InvalidJson(e.to_string()))?;
        spec.validate(now, fresh_id)
    }
}

/// What a job field must hold, in the words of a type error.
fn expected_type(field: &str) -> Option<&'static str> {
    Some(match field {
        "id" => "a string",
        "command" => "a string (a shell command)",
        "max_retries" => "a whole number >= 0",
        "priority" => "a whole number",
        "run_at" => "an RFC 3339 time like 2025-11-09T08:21:13Z",
        "cwd" => "a string (a directory)",
        "env" => "an object of strings, like {\"LANG\":\"C\"}",
        _ => return None,
    })
}

/// A JSON `delay` or `timeout`: a number of seconds, or a duration string.
fn json_duration(field: &str, v: serde_json::Value) -> Result<u64, ModelError> {
    let wrong = || {
        ModelError::InvalidJob(format!(
            "`{field}` must be a number of seconds or a duration like 5m"
        ))
    };
    match v {
        serde_json::Value::Number(n) => {
            let secs = n.as_f64().ok_or_else(wrong)?;
            if !secs.is_finite() || secs < 0.0 {
                return Err(wrong());
            }
            Ok(secs_to_ms(secs))
        }
        serde_json::Value::String(s) => parse_duration(&s).map_err(|_| wrong()),
        _ => Err(wrong()),
    }
}

/// Parses a duration as people write it: a number of seconds (`30`, `1.5`) or a number with a
/// unit, units combined (`90s`, `5m`, `2h`, `1d`, `1h30m`, `250ms`). Returns milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, ModelError> {
    let t = s.trim();
    let bad = || ModelError::InvalidDuration(s.to_string());
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = t.parse().map_err(|_| bad())?;
        if !secs.is_finite() {
            return Err(bad());
        }
        return Ok(secs_to_ms(secs));
    }
    let d = humantime::parse_duration(t).map_err(|_| bad())?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `1.5s`, `5m`, `2h 30m`: a duration in milliseconds as people read it.
pub fn format_duration(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

impl JobSpec {
    /// Checks every field and resolves the id (`fresh_id` when none is given) and the run time.
    pub fn validate(
        self,
        now: Millis,
        fresh_id: impl FnOnce() -> String,
    ) -> Result<NewJob, ModelError> {
        let bad = |m: &str| Err(ModelError::InvalidJob(m.to_string()));
        let id = self.id.unwrap_or_else(fresh_id);
        let run_at = match (self.run_at, self.delay) {
            (Some(_), Some(_)) => return bad("give either `run_at` or `delay`, not both"),
            (Some(t), None) => Some(parse_ts(&t)?),
            (None, Some(d)) => Some(now.saturating_add(json_duration("delay", d)?)),
            (None, None) => None,
        };
        let timeout_ms = match self.timeout {
            None => None,
            Some(t) => match json_duration("timeout", t)? {
                0 => return bad("`timeout` must be more than 0 seconds"),
                ms => Some(ms),
            },
        };
        let env = self.env.unwrap_or_default().into_iter().collect();
        let job = NewJob {
            id,
            command: self.command,
            max_retries: self.max_retries,
            priority: self.priority.unwrap_or(0),
            run_at,
            timeout_ms,
            cwd: self.cwd,
            env,
        };
        job.check()?;
        Ok(job)
    }
}

impl NewJob {
    /// The rules every job must follow to be stored, whoever sends it: the CLI checks them
    /// when it parses a job, and the owner of the store again for every request it applies
    /// (a request file may have been written by hand).
    pub fn check(&self) -> Result<(), ModelError> {
        let bad = |m: &str| Err(ModelError::InvalidJob(m.to_string()));
        if self.id.is_empty() {
            return bad("`id` must not be empty");
        }
        if self.id.len() > MAX_ID_LEN {
            return bad("`id` is longer than 256 bytes");
        }
        if self.id.chars().any(|c| c.is_control()) {
            return bad("`id` must not contain control characters");
        }
        if self.command.trim().is_empty() {
            return bad("`command` must not be empty");
        }
        if self.command.contains('\0') {
            return bad("`command` must not contain a NUL byte");
        }
        if self.timeout_ms == Some(0) {
            return bad("`timeout` must be more than 0 seconds");
        }
        if let Some(cwd) = &self.cwd {
            if cwd.is_empty() || cwd.contains('\0') {
                return bad("`cwd` must be a directory path without NUL bytes");
            }
        }
        for (k, v) in &self.env {
            check_env_name(k)?;
            if v.contains('\0') {
                return Err(ModelError::InvalidJob(format!(
                    "the value of `{k}` in `env` must not contain a NUL byte"
                )));
            }
        }
        Ok(())
    }
}

/// An environment variable's name: not empty, no `=` and no NUL.
pub fn check_env_name(name: &str) -> Result<(), ModelError> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(ModelError::InvalidJob(format!(
            "`{name}` is not a valid environment variable name (it must be non-empty, without = or NUL)"
        )));
    }
    Ok(())
}

fn secs_to_ms(s: f64) -> u64 {
    // `as` saturates for floats out of range, which is what we want for absurd values.
    (s * 1000.0).round() as u64
}

/// The settings a user may change with `queuectl config set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigKey {
    MaxRetries,
    BackoffBase,
    PollIntervalMs,
    /// How long completed jobs are kept (ms; [`KEEP`]: for ever).
    RetentionCompleted,
    /// How long dead jobs are kept (ms; [`KEEP`]: for ever).
    RetentionDead,
    /// How long a job's reservation holds on a shared queue unless its supervisor renews it
    /// (ms); read when a supervisor starts.
    LeaseMs,
}

/// A retention of 0: keep for ever (`keep` on the command line).
pub const KEEP: u64 = 0;

impl ConfigKey {
    pub const ALL: [ConfigKey; 6] = [
        ConfigKey::MaxRetries,
        ConfigKey::BackoffBase,
        ConfigKey::PollIntervalMs,
        ConfigKey::RetentionCompleted,
        ConfigKey::RetentionDead,
        ConfigKey::LeaseMs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKey::MaxRetries => "max_retries",
            ConfigKey::BackoffBase => "backoff_base",
            ConfigKey::PollIntervalMs => "poll_interval_ms",
            ConfigKey::RetentionCompleted => "retention_completed",
            ConfigKey::RetentionDead => "retention_dead",
            ConfigKey::LeaseMs => "lease_ms",
        }
    }

    /// A value as people read it: retentions as durations (`7days`) or `keep`.
    pub fn format_value(self, value: u64) -> String {
        match self {
            ConfigKey::RetentionCompleted | ConfigKey::RetentionDead if value == KEEP => {
                "keep".to_string()
            }
            ConfigKey::RetentionCompleted | ConfigKey::RetentionDead => format_duration(value),
            _ => value.to_string(),
        }
    }

    pub fn default_value(self) -> u64 {
        match self {
            ConfigKey::MaxRetries => 3,
            ConfigKey::BackoffBase => 2,
            ConfigKey::PollIntervalMs => 500,
            ConfigKey::RetentionCompleted => 7 * 24 * 3600 * 1000,
            ConfigKey::RetentionDead => KEEP,
            ConfigKey::LeaseMs => 30_000,
        }
    }

    /// Checks a value already in canonical form (as stored, or sent by a client).
    pub fn check_canonical(self, value: u64) -> Result<u64, ModelError> {
        match self {
            ConfigKey::RetentionCompleted | ConfigKey::RetentionDead => Ok(value),
            _ => self.parse_value(&value.to_string()),
        }
    }

    /// Checks a value typed by a user and returns it in canonical form.
    pub fn parse_value(self, value: &str) -> Result<u64, ModelError> {
        let invalid = |reason| ModelError::InvalidConfigValue {
            key: self.as_str(),
            value: value.to_string(),
            reason,
        };
        if matches!(
            self,
            ConfigKey::RetentionCompleted | ConfigKey::RetentionDead
        ) {
            let v = value.trim();
            if v.eq_ignore_ascii_case("keep") {
                return Ok(KEEP);
            }
            return match parse_duration(v) {
                Ok(0) => Err(invalid("must be longer than 0 (or `keep`)")),
                Ok(ms) => Ok(ms),
                Err(_) => Err(invalid("expected a duration like 12h or 7d, or `keep`")),
            };
        }
        let n: u64 = match (self, value.trim().parse()) {
            (_, Ok(n)) => n,
            // The duration settings also take a unit: `300ms`, `2s`.
            (ConfigKey::PollIntervalMs | ConfigKey::LeaseMs, Err(_)) => {
                humantime::parse_duration(value.trim())
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .map_err(|_| invalid("expected milliseconds or a duration like 300ms or 2s"))?
            }
            (_, Err(_)) => return Err(invalid("expected a whole number >= 0")),
        };
        match self {
            ConfigKey::MaxRetries if n > u64::from(u32::MAX) => Err(invalid("too large")),
            ConfigKey::BackoffBase if n < 1 => Err(invalid("must be at least 1")),
            ConfigKey::BackoffBase if n > 1_000_000 => Err(invalid("must be at most 1000000")),
            ConfigKey::PollIntervalMs if n < 1 => Err(invalid("must be at least 1")),
            ConfigKey::PollIntervalMs if n > 3_600_000 => {
                Err(invalid("must be at most 3600000 (one hour)"))
            }
            // Renewed every third of it: shorter would renew all the time.
            ConfigKey::LeaseMs if n < 1_000 => Err(invalid("must be at least 1000 (one second)")),
            ConfigKey::LeaseMs if n > 3_600_000 => {
                Err(invalid("must be at most 3600000 (one hour)"))
            }
            _ => Ok(n),
        }
    }
}

impl FromStr for ConfigKey {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        ConfigKey::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ModelError::UnknownConfigKey(s.to_string()))
    }
}

/// The effective configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub max_retries: u32,
    pub backoff_base: u64,
    pub poll_interval_ms: u64,
    /// Completed jobs older than this (ms since they finished) are removed; [`KEEP`]: never.
    #[serde(default = "default_retention_completed")]
    pub retention_completed: u64,
    /// Dead jobs older than this are removed; [`KEEP`]: never.
    #[serde(default)]
    pub retention_dead: u64,
    /// How long a reservation on a shared queue holds unless renewed (ms).
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

fn default_lease_ms() -> u64 {
    ConfigKey::LeaseMs.default_value()
}

fn default_retention_completed() -> u64 {
    ConfigKey::RetentionCompleted.default_value()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_retries: ConfigKey::MaxRetries.default_value() as u32,
            backoff_base: ConfigKey::BackoffBase.default_value(),
            poll_interval_ms: ConfigKey::PollIntervalMs.default_value(),
            retention_completed: default_retention_completed(),
            retention_dead: ConfigKey::RetentionDead.default_value(),
            lease_ms: default_lease_ms(),
        }
    }
}

impl Config {
    pub fn get(&self, key: ConfigKey) -> u64 {
        match key {
            ConfigKey::MaxRetries => u64::from(self.max_retries),
            ConfigKey::BackoffBase => self.backoff_base,
            ConfigKey::PollIntervalMs => self.poll_interval_ms,
            ConfigKey::RetentionCompleted => self.retention_completed,
            ConfigKey::RetentionDead => self.retention_dead,
            ConfigKey::LeaseMs => self.lease_ms,
        }
    }

    /// Sets a value already checked by [`ConfigKey::parse_value`].
    pub fn set(&mut self, key: ConfigKey, value: u64) {
        match key {
            ConfigKey::MaxRetries => self.max_retries = u32::try_from(value).unwrap_or(u32::MAX),
            ConfigKey::BackoffBase => self.backoff_base = value,
            ConfigKey::PollIntervalMs => self.poll_interval_ms = value,
            ConfigKey::RetentionCompleted => self.retention_completed = value,
            ConfigKey::RetentionDead => self.retention_dead = value,
            ConfigKey::LeaseMs => self.lease_ms = value,
        }
    }

    /// Every key with its value, in documentation order.
    pub fn entries(&self) -> Vec<(&'static str, u64)> {
        ConfigKey::ALL
            .into_iter()
            .map(|k| (k.as_str(), self.get(k)))
            .collect()
    }
}

/// What the retry rule decides after a failed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run again at this time (the delay in seconds is given for the log).
    Retry { at: Millis, delay_secs: u64 },
    /// Move to the dead letter queue.
    Dead,
}

/// The retry rule of the Node.js queuectl: with `attempts` already incremented, `dead` when attempts >= max_retries,
/// else retry after backoff_base ^ attempts seconds (saturating).
pub fn retry_decision(
    attempts: u32,
    max_retries: u32,
    backoff_base: u64,
    now: Millis,
) -> RetryDecision {
    if attempts >= max_retries {
        return RetryDecision::Dead;
    }
    let delay_secs = backoff_base.saturating_pow(attempts);
    RetryDecision::Retry {
        at: now.saturating_add(delay_secs.saturating_mul(1000)),
        delay_secs,
    }
}

/// How one run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The shell exited with this status.
    Exited(i32),
    /// The shell was killed by this signal.
    Signaled(i32),
    /// The run ran past the job's timeout and its process group was killed.
    TimedOut { after_ms: u64 },
    /// The command could not be started.
    SpawnFailed(String),
    /// The worker process running it died.
    WorkerLost,
    /// The supervisor stopped without recording the end of the run.
    Interrupted,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }

    /// A short description for `last_error` and the log.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Exited(code) => format!("exit code {code}"),
            Outcome::Signaled(sig) => format!("killed by signal {sig}"),
            Outcome::TimedOut { after_ms } => {
                format!("timed out after {:.1}s", *after_ms as f64 / 1000.0)
            }
            Outcome::SpawnFailed(e) => format!("could not start: {e}"),
            Outcome::WorkerLost => "worker exited unexpectedly".to_string(),
            Outcome::Interrupted => {
                "interrupted: the supervisor stopped during this attempt".to_string()
            }
        }
    }
}

/// How much of stderr goes into `last_error`.
const ERROR_TAIL_CHARS: usize = 500;

/// How one run ended, with the end of its output: the one type that carries a run's
/// result from the job's shell (`worker::command`) over the pipe (`worker::protocol`) through
/// the supervisor to the store, which keeps it as an [`RunOutput`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    pub outcome: Outcome,
    /// Wall time from spawning the shell to its exit.
    pub duration_ms: u64,
    /// The last 64 KiB of standard output.
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// The last 64 KiB of standard error.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
}

impl RunResult {
    /// A run that ended with `outcome` and left no output (its worker died, say).
    pub fn without_output(outcome: Outcome) -> RunResult {
        RunResult {
            outcome,
            duration_ms: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    /// A successful run that printed nothing leaves nothing to keep.
    pub fn has_output_to_keep(&self) -> bool {
        !(self.outcome.is_success() && self.stdout.is_empty() && self.stderr.is_empty())
    }

    /// `last_error` for a failed run: what happened, then the end of its stderr.
    pub fn last_error(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let text = text.trim();
        let mut msg = self.outcome.describe();
        if !text.is_empty() {
            let skip = text.chars().count().saturating_sub(ERROR_TAIL_CHARS);
            let tail: String = text.chars().skip(skip).collect();
            msg.push_str(": ");
            if skip > 0 {
                msg.push('…');
            }
            msg.push_str(&tail);
        }
        msg
    }

    /// The record the store keeps of run number `run`, ended at `finished_at`.
    pub fn into_output(self, run: u32, finished_at: Millis) -> RunOutput {
        RunOutput {
            run,
            outcome: self.outcome,
            finished_at,
            duration_ms: self.duration_ms,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// The captured output of one run, as kept with the job (`queuectl logs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutput {
    /// Which run of the job (1-based: the job's `runs` when it started).
    pub run: u32,
    pub outcome: Outcome,
    pub finished_at: Millis,
    pub duration_ms: u64,
    /// The last 64 KiB of standard output.
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// The last 64 KiB of standard error.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
}

/// Job counts per state, plus who is running them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub pending: u64,
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
    pub dead: u64,
}

impl Counts {
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Pending => self.pending,
            JobState::Processing => self.processing,
            JobState::Completed => self.completed,
            JobState::Failed => self.failed,
            JobState::Dead => self.dead,
        }
    }

    pub fn set(&mut self, state: JobState, n: u64) {
        match state {
            JobState::Pending => self.pending = n,
            JobState::Processing => self.processing = n,
            JobState::Completed => self.completed = n,
            JobState::Failed => self.failed = n,
            JobState::Dead => self.dead = n,
        }
    }

    pub fn total(&self) -> u64 {
        JobState::ALL.into_iter().map(|s| self.get(s)).sum()
    }
}

/// `s` with every control character (newlines, escape sequences) written as an escape such as
/// `\n` or `\u{1b}`, for log lines and tables shown to a person.
pub fn escape_control(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The current time.
pub fn now_ms() -> Millis {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

/// `2025-11-09T08:21:13.456Z`.
pub fn format_ts(ms: Millis) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => "+262143-12-31T23:59:59.999Z".to_string(),
    }
}

/// Parses an RFC 3339 time (any offset) at or after the epoch.
pub fn parse_ts(s: &str) -> Result<Millis, ModelError> {
    let t =
        DateTime::parse_from_rfc3339(s.trim()).map_err(|_| ModelError::InvalidTime(s.into()))?;
    u64::try_from(t.timestamp_millis()).map_err(|_| ModelError::InvalidTime(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> String {
        "fresh".into()
    }

    #[test]
    fn state_names_round_trip() {
        for st in JobState::ALL {
            assert_eq!(st.as_str().parse::<JobState>(), Ok(st));
        }
        assert!(matches!(
            "done".parse::<JobState>(),
            Err(ModelError::UnknownState(_))
        ));
    }

    #[test]
    fn spec_defaults_and_fields() {
        let j = NewJob::from_json(r#"{"command":"echo hi"}"#, 1000, fresh).unwrap();
        assert_eq!(j.command, "echo hi");
        assert_eq!(j.id, "fresh", "named by the caller");
        assert_eq!(
            (j.priority, j.run_at, j.max_retries, j.timeout_ms),
            (0, None, None, None)
        );
        let j = NewJob::from_json(
            r#"{"id":"a","command":"x","priority":-3,"delay":1.5,"timeout":2,"max_retries":0}"#,
            1000,
            fresh,
        )
        .unwrap();
        assert_eq!(j.id, "a");
        assert_eq!(j.priority, -3);
        assert_eq!(j.run_at, Some(2500));
        assert_eq!(j.timeout_ms, Some(2000));
        assert_eq!(j.max_retries, Some(0));
        let j = NewJob::from_json(
            r#"{"command":"x","run_at":"1970-01-01T00:00:01.5+00:00"}"#,
            0,
            fresh,
        )
        .unwrap();
        assert_eq!(j.run_at, Some(1500));
    }

    #[test]
    fn spec_rejections() {
        let cases = [
            "not json",
            "{}",
            r#"{"command":""}"#,
            r#"{"command":"   "}"#,
            r#"{"command":"a\u0000b"}"#,
            r#"{"command":5}"#,
            r#"{"command":"x","id":""}"#,
            r#"{"command":"x","max_retries":-1}"#,
            r#"{"command":"x","max_retries":1.5}"#,
            r#"{"command":"x","colour":"red"}"#,
            r#"{"command":"x","timeout":0}"#,
            r#"{"command":"x","delay":-1}"#,
            r#"{"command":"x","delay":1,"run_at":"2025-01-01T00:00:00Z"}"#,
            r#"{"command":"x","run_at":"tomorrow"}"#,
            r#"[{"command":"x"}]"#,
        ];
        for c in cases {
            let err = NewJob::from_json(c, 0, fresh).expect_err(c);
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = NewJob::from_json(r#"{"command":"x","max_retries":"3"}"#, 0, fresh).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid job: `max_retries` must be a whole number >= 0"
        );
        let err = NewJob::from_json(r#"{"command":"x"} trailing"#, 0, fresh).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[test]
    fn config_validation() {
        assert_eq!(ConfigKey::BackoffBase.parse_value("3"), Ok(3));
        assert!(ConfigKey::BackoffBase.parse_value("0").is_err());
        assert!(ConfigKey::PollIntervalMs.parse_value("0").is_err());
        assert!(ConfigKey::MaxRetries.parse_value("-1").is_err());
        assert!(ConfigKey::MaxRetries.parse_value("abc").is_err());
        assert_eq!(ConfigKey::MaxRetries.parse_value("0"), Ok(0));
        assert!("colour".parse::<ConfigKey>().is_err());
    }

    #[test]
    fn retry_rule_follows_the_seed() {
        assert_eq!(
            retry_decision(1, 3, 2, 0),
            RetryDecision::Retry {
                at: 2000,
                delay_secs: 2
            }
        );
        assert_eq!(
            retry_decision(2, 3, 2, 0),
            RetryDecision::Retry {
                at: 4000,
                delay_secs: 4
            }
        );
        assert_eq!(retry_decision(3, 3, 2, 0), RetryDecision::Dead);
        assert_eq!(retry_decision(1, 0, 2, 0), RetryDecision::Dead);
        // Huge exponents saturate instead of overflowing.
        assert!(matches!(
            retry_decision(200, 1000, 1000, 5),
            RetryDecision::Retry { .. }
        ));
    }

    #[test]
    fn durations_as_people_write_them() {
        for (text, ms) in [
            ("30", 30_000),
            ("1.5", 1_500),
            ("0", 0),
            ("90s", 90_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("1h30m", 5_400_000),
            (" 250ms ", 250),
        ] {
            assert_eq!(parse_duration(text), Ok(ms), "{text}");
        }
        for bad in ["", "soon", "-1", "5 parsecs", "1.2.3", "m"] {
            assert_eq!(
                parse_duration(bad),
                Err(ModelError::InvalidDuration(bad.to_string())),
                "{bad}"
            );
        }
        assert_eq!(format_duration(90_000), "1m 30s");
        let j = NewJob::from_json(
            r#"{"command":"x","delay":"5m","timeout":"1h"}"#,
            1000,
            fresh,
        )
        .unwrap();
        assert_eq!((j.run_at, j.timeout_ms), (Some(301_000), Some(3_600_000)));
        let err = NewJob::from_json(r#"{"command":"x","delay":"soon"}"#, 0, fresh).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid job: `delay` must be a number of seconds or a duration like 5m"
        );
        assert_eq!(ConfigKey::PollIntervalMs.parse_value("2s"), Ok(2000));
        assert!(ConfigKey::MaxRetries.parse_value("2s").is_err());
    }

    #[test]
    fn cwd_and_env_are_checked() {
        let j = NewJob::from_json(
            r#"{"command":"x","cwd":"/a","env":{"B":"2","A":"1"}}"#,
            0,
            fresh,
        )
        .unwrap();
        assert_eq!(j.cwd.as_deref(), Some("/a"));
        assert_eq!(j.env, [("A".into(), "1".into()), ("B".into(), "2".into())]);
        for bad in [
            r#"{"command":"x","env":{"A=B":"1"}}"#,
            r#"{"command":"x","env":{"":"1"}}"#,
            r#"{"command":"x","env":{"A":1}}"#,
            r#"{"command":"x","cwd":""}"#,
        ] {
            assert!(NewJob::from_json(bad, 0, fresh).is_err(), "{bad}");
        }
    }

    #[test]
    fn attempts_summary_names_runs_and_failures() {
        let mut j = Job {
            id: "a".into(),
            command: "x".into(),
            state: JobState::Failed,
            attempts: 2,
            max_retries: 3,
            created_at: 0,
            updated_at: 0,
            available_at: None,
            locked_by: None,
            locked_at: None,
            last_error: None,
            priority: 0,
            timeout_ms: None,
            seq: 0,
            pgid: None,
            runs: 3,
            cwd: None,
            env: Vec::new(),
        };
        assert_eq!(j.attempts_summary(), "runs 3, failures 2 of 3 allowed");
        j.max_retries = 0;
        j.attempts = 1;
        assert_eq!(j.attempts_summary(), "runs 3, failures 1 of 1 allowed");
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_ts(1_762_676_473_456), "2025-11-09T08:21:13.456Z");
        assert_eq!(parse_ts("2025-11-09T08:21:13.456Z"), Ok(1_762_676_473_456));
        assert_eq!(
            parse_ts("2025-11-09T09:21:13.456+01:00"),
            Ok(1_762_676_473_456)
        );
        assert!(parse_ts("1969-12-31T23:59:59Z").is_err());
    }

    #[test]
    fn last_error_names_the_cause_then_stderr() {
        let failed = |outcome: Outcome, stderr: &[u8]| RunResult {
            stderr: stderr.to_vec(),
            ..RunResult::without_output(outcome)
        };
        assert_eq!(failed(Outcome::Exited(3), b"").last_error(), "exit code 3");
        assert_eq!(
            failed(Outcome::Exited(1), b"oops\n").last_error(),
            "exit code 1: oops"
        );
        assert!(failed(Outcome::TimedOut { after_ms: 1500 }, b"")
            .last_error()
            .starts_with("timed out after 1.5"));
        let long = "x".repeat(2000);
        let e = failed(Outcome::Signaled(9), long.as_bytes()).last_error();
        assert!(e.starts_with("killed by signal 9: …"));
        assert!(e.chars().count() < 560);
    }

    #[test]
    fn only_a_silent_success_leaves_no_output() {
        let ok = RunResult::without_output(Outcome::Exited(0));
        assert!(!ok.has_output_to_keep());
        let printed = RunResult {
            stdout: b"x".to_vec(),
            ..ok.clone()
        };
        assert!(printed.has_output_to_keep());
        assert!(RunResult::without_output(Outcome::Exited(1)).has_output_to_keep());
        let out = printed.into_output(3, 99);
        assert_eq!(
            (out.run, out.finished_at, out.stdout),
            (3, 99, b"x".to_vec())
        );
    }

    #[test]
    fn retention_settings_are_durations_or_keep() {
        let k = ConfigKey::RetentionCompleted;
        assert_eq!(k.parse_value("7d"), Ok(7 * 24 * 3600 * 1000));
        assert_eq!(k.parse_value("keep"), Ok(KEEP));
        assert_eq!(k.parse_value("90"), Ok(90_000), "plain numbers are seconds");
        assert!(k.parse_value("0").is_err());
        assert!(k.parse_value("soon").is_err());
        assert_eq!(k.format_value(KEEP), "keep");
        assert_eq!(k.format_value(3_600_000), "1h");
        assert_eq!(k.check_canonical(604_800_000), Ok(604_800_000));
        assert_eq!(Config::default().retention_completed, 604_800_000);
        assert_eq!(Config::default().retention_dead, KEEP);
        assert_eq!("retention_dead".parse(), Ok(ConfigKey::RetentionDead));
    }
}
