//! What `GET /config` shows: the version in force and the last reload's result.

use std::time::SystemTime;

use serde::Serialize;

use super::{Loaded, Trigger};
use crate::config::ConfigErrors;

/// The configuration in force and how it got there.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// Content hash of the files in force.
    pub version: String,
    /// When they were loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// The same instant as Unix seconds.
    pub loaded_at_unix: f64,
    /// What loaded them.
    pub loaded_by: String,
    /// The files in force.
    pub files: Vec<String>,
    /// The domains in force.
    pub domains: Vec<String>,
    /// Successful loads since start, the first included.
    pub loads: u64,
    /// Failed reloads since start.
    pub failures: u64,
    /// The last reload's error, until a later reload succeeds or finds the files in force.
    pub last_error: Option<FailedReload>,
}

/// A reload that failed.
#[derive(Debug, Clone, Serialize)]
pub struct FailedReload {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// What asked for it.
    pub trigger: String,
    /// Every problem, each naming file, line and descriptor.
    pub errors: Vec<String>,
}

fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl ReloadStatus {
    /// The status of a fresh load.
    pub fn loaded(loaded: &Loaded, trigger: Trigger, at: SystemTime) -> Self {
        Self {
            version: loaded.version.clone(),
            loaded_at: timestamp(at),
            loaded_at_unix: at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            loaded_by: trigger.to_string(),
            files: loaded
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect(),
            domains: loaded
                .config
                .domains()
                .iter()
                .map(|d| d.name.clone())
                .collect(),
            loads: 1,
            failures: 0,
            last_error: None,
        }
    }

    /// This status, carrying the counters of `previous`.
    pub fn after(mut self, previous: &ReloadStatus) -> Self {
        self.loads += previous.loads;
        self.failures = previous.failures;
        self
    }

    /// Records a failed reload.
    pub fn failed(&mut self, errors: &ConfigErrors, trigger: Trigger, at: SystemTime) {
        self.failures += 1;
        self.last_error = Some(FailedReload {
            at: timestamp(at),
            trigger: trigger.to_string(),
            errors: errors.0.iter().map(ToString::to_string).collect(),
        });
    }
}
