//! Operations: reloading the configuration while serving.
//!
//! Every trigger (file watcher, SIGHUP, `POST /reload`) goes through one [`Reloader`], which
//! reads and compiles off the hot path, then publishes the new configuration atomically. A
//! configuration that fails to load changes nothing: the last good one stays in force, the
//! error is logged and kept for `GET /config`, and the next valid change recovers by itself.

pub mod status;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::config::{self, ConfigError, ConfigErrors, Options, RateLimitConfig, source};
use crate::decision::Limiter;
pub use status::{FailedReload, ReloadStatus};

/// What asked for a (re)load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first load, before serving.
    Startup,
    /// A change seen by the file watcher.
    Watch,
    /// SIGHUP.
    Signal,
    /// `POST /reload`.
    Http,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::Startup => "startup",
            Trigger::Watch => "file change",
            Trigger::Signal => "SIGHUP",
            Trigger::Http => "POST /reload",
        })
    }
}

/// A compiled configuration with what identifies it.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: RateLimitConfig,
    /// `sha256:` of the file names and contents: equal versions mean equal input.
    pub version: String,
    /// The files read.
    pub files: Vec<PathBuf>,
}

/// Reads and compiles the configuration at `path` (blocking file I/O).
pub fn load(path: &Path, options: &Options) -> Result<Loaded, ConfigErrors> {
    let files = source::read(path).map_err(|e| ConfigErrors(vec![e]))?;
    let mut digest = Sha256::new();
    for file in &files {
        let name = file.path.file_name().unwrap_or_default().to_string_lossy();
        for part in [name.as_bytes(), file.text.as_bytes()] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
    }
    let version = format!("sha256:{:x}", digest.finalize());
    let config = config::compile(&files, options).map_err(ConfigErrors)?;
    Ok(Loaded {
        config,
        version,
        files: files.into_iter().map(|f| f.path).collect(),
    })
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new configuration is in force.
    Applied,
    /// The files are the same as the configuration in force: nothing to do.
    Unchanged,
}

/// Reloads the configuration at one path into a [`Limiter`].
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    options: Options,
    limiter: Arc<Limiter>,
    status: Mutex<ReloadStatus>,
    /// One reload at a time, so triggers never interleave.
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Loads the configuration at `path` and builds the limiter on it with `build`.
    pub fn start(
        path: &Path,
        options: Options,
        build: impl FnOnce(RateLimitConfig) -> Limiter,
    ) -> Result<Self, ConfigErrors> {
        let loaded = load(path, &options)?;
        let status = ReloadStatus::loaded(&loaded, Trigger::Startup, SystemTime::now());
        Ok(Self {
            path: path.to_path_buf(),
            options,
            limiter: Arc::new(build(loaded.config)),
            status: Mutex::new(status),
            serial: tokio::sync::Mutex::new(()),
        })
    }

    /// The limiter this reloader feeds.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version in force and the last reload's result.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `version` is the configuration in force.
    fn in_force(&self, version: &str) -> bool {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .version
            == version
    }

    fn update_status(&self, change: impl FnOnce(&mut ReloadStatus)) {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Reloads now. On error the configuration in force is kept.
    pub async fn reload(&self, trigger: Trigger) -> Result<Outcome, ConfigErrors> {
        let _one_at_a_time = self.serial.lock().await;
        let (path, options) = (self.path.clone(), self.options);
        let loaded = tokio::task::spawn_blocking(move || load(&path, &options))
            .await
            .unwrap_or_else(|join| {
                Err(ConfigErrors(vec![ConfigError::file(
                    &self.path,
                    format!("reload task failed: {join}"),
                )]))
            });
        let now = SystemTime::now();
        let was_failing = self.status().last_error.is_some();
        match loaded {
            Ok(loaded) if self.in_force(&loaded.version) => {
                self.update_status(|s| s.last_error = None);
                if was_failing {
                    tracing::info!(%trigger, version = %loaded.version, "configuration valid again: the version in force is unchanged");
                } else {
                    tracing::info!(%trigger, version = %loaded.version, "configuration unchanged");
                }
                Ok(Outcome::Unchanged)
            }
            Ok(loaded) => {
                let next = ReloadStatus::loaded(&loaded, trigger, now);
                // Dropping removed rules' buckets scans the map: keep it off the request workers.
                let limiter = self.limiter.clone();
                let swapped =
                    tokio::task::spawn_blocking(move || limiter.swap_config(loaded.config));
                if let Err(join) = swapped.await {
                    tracing::error!(%join, "configuration swap task failed");
                }
                if was_failing {
                    tracing::info!(%trigger, version = %next.version, domains = next.domains.len(), "configuration valid again: reloaded");
                } else {
                    tracing::info!(%trigger, version = %next.version, domains = next.domains.len(), "configuration reloaded");
                }
                self.update_status(|s| *s = next.after(s));
                Ok(Outcome::Applied)
            }
            Err(errors) => {
                for error in &errors.0 {
                    tracing::error!(%trigger, "configuration reload failed, keeping the last good one: {error}");
                }
                self.update_status(|s| s.failed(&errors, trigger, now));
                Err(errors)
            }
        }
    }
}
