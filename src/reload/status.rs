//! What `GET /config` shows: the version in force and the last reload's result.

use std::time::SystemTime;

use serde::Serialize;

use super::{Loaded, Trigger};
use crate::config::ConfigErrors;
use crate::xds::XdsOptions;

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
    /// The xDS subscription, when the limits come from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xds: Option<XdsStatus>,
}

/// An xDS subscription as `GET /config` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct XdsStatus {
    /// The management server.
    pub server: String,
    /// The node id sent to it.
    pub node_id: String,
    /// Whether a stream to it is open now.
    pub connected: bool,
    /// The server's `version_info` of the configuration in force (ACKed); none yet before the
    /// first valid version.
    pub version_info: Option<String>,
    /// Versions accepted (ACK) since start.
    pub acks: u64,
    /// Versions refused (NACK) since start; their errors are in `last_error`.
    pub nacks: u64,
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
            xds: None,
        }
    }

    /// The status before the first version arrives from the xDS server of `xds`.
    pub fn awaiting(xds: &XdsOptions) -> Self {
        Self {
            version: String::new(),
            loaded_at: String::new(),
            loaded_at_unix: 0.0,
            loaded_by: String::new(),
            files: Vec::new(),
            domains: Vec::new(),
            loads: 0,
            failures: 0,
            last_error: None,
            xds: Some(XdsStatus {
                server: xds.server.to_string(),
                node_id: xds.node_id.clone(),
                connected: false,
                version_info: None,
                acks: 0,
                nacks: 0,
            }),
        }
    }

    /// This status, carrying the counters and the xDS subscription of `previous`.
    pub fn after(mut self, previous: &ReloadStatus) -> Self {
        self.loads += previous.loads;
        self.failures = previous.failures;
        self.xds.clone_from(&previous.xds);
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
