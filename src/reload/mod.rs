//! Operations: reloading the configuration while serving.
//!
//! Every trigger (file watcher, SIGHUP, `POST /reload`, a version pushed over xDS) goes through
//! one [`Reloader`], which compiles off the hot path, then publishes the new configuration
//! atomically. A configuration that fails to load changes nothing: the last good one stays in
//! force, the error is logged and kept for `GET /config`, and the next valid change recovers by
//! itself.

pub mod status;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::config::{
    self, ConfigError, ConfigErrors, Options, RateLimitConfig, source, source::SourceFile,
};
use crate::decision::Limiter;
use crate::xds::XdsOptions;
pub use status::{FailedReload, ReloadStatus, XdsStatus};

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
    /// A version pushed by the xDS management server.
    Xds,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::Startup => "startup",
            Trigger::Watch => "file change",
            Trigger::Signal => "SIGHUP",
            Trigger::Http => "POST /reload",
            Trigger::Xds => "xDS push",
        })
    }
}

/// Where the limits come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A YAML file or a directory of them, read at start and again on each reload.
    Files(PathBuf),
    /// Versions pushed by an xDS management server; none is in force until the first arrives.
    Xds(Box<XdsOptions>),
}

impl From<PathBuf> for Source {
    fn from(path: PathBuf) -> Self {
        Source::Files(path)
    }
}

impl From<&Path> for Source {
    fn from(path: &Path) -> Self {
        Source::Files(path.to_path_buf())
    }
}

impl From<&str> for Source {
    fn from(path: &str) -> Self {
        Source::Files(PathBuf::from(path))
    }
}

/// A compiled configuration with what identifies it.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: RateLimitConfig,
    /// `sha256:` of the file names and contents: equal versions mean equal input.
    pub version: String,
    /// The files read (for xDS, `xds:` and each resource's name).
    pub files: Vec<PathBuf>,
}

/// Reads and compiles the configuration at `path` (blocking file I/O).
pub fn load(path: &Path, options: &Options) -> Result<Loaded, ConfigErrors> {
    let files = source::read(path).map_err(|e| ConfigErrors(vec![e]))?;
    compile(files, options)
}

/// Compiles configuration sources, wherever they were read from, through the one pipeline.
pub fn compile(files: Vec<SourceFile>, options: &Options) -> Result<Loaded, ConfigErrors> {
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

/// Reloads the configuration from its [`Source`] into a [`Limiter`].
#[derive(Debug)]
pub struct Reloader {
    source: Source,
    options: Options,
    limiter: Arc<Limiter>,
    status: Mutex<ReloadStatus>,
    /// Whether any configuration has been loaded (an xDS source starts without).
    loaded: tokio::sync::watch::Sender<bool>,
    /// One reload at a time, so triggers never interleave.
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Loads the configuration from `source` and builds the limiter on it with `build`. An
    /// xDS source starts with no limits, until its server pushes a version.
    pub fn start(
        source: impl Into<Source>,
        options: Options,
        build: impl FnOnce(RateLimitConfig) -> Limiter,
    ) -> Result<Self, ConfigErrors> {
        let source = source.into();
        let (config, status) = match &source {
            Source::Files(path) => {
                let loaded = load(path, &options)?;
                let status = ReloadStatus::loaded(&loaded, Trigger::Startup, SystemTime::now());
                (loaded.config, status)
            }
            Source::Xds(xds) => (RateLimitConfig::default(), ReloadStatus::awaiting(xds)),
        };
        let (loaded, _) = tokio::sync::watch::channel(status.loads > 0);
        Ok(Self {
            source,
            options,
            limiter: Arc::new(build(config)),
            status: Mutex::new(status),
            loaded,
            serial: tokio::sync::Mutex::new(()),
        })
    }

    /// Resolves once a configuration is in force (at once for files; for xDS, when the first
    /// valid version has been applied).
    pub async fn first_loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        // The sender lives as long as `self`.
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// Whether a configuration is in force (always for files; for xDS, once the first valid
    /// version has been applied).
    pub fn has_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Whether health checks should answer not serving now: limits come over xDS, served
    /// before the first version with `unhealthy_until_loaded`, and none has arrived yet.
    pub fn unhealthy(&self) -> bool {
        matches!(&self.source, Source::Xds(xds) if xds.start_without_config && xds.unhealthy_until_loaded)
            && !self.has_loaded()
    }

    /// The limiter this reloader feeds.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Where the limits come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// How sources compile.
    pub fn options(&self) -> &Options {
        &self.options
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

    /// Changes what `GET /config` shows of the xDS subscription (nothing without one).
    pub fn update_xds(&self, change: impl FnOnce(&mut XdsStatus)) {
        self.update_status(|status| {
            if let Some(xds) = &mut status.xds {
                change(xds);
            }
        });
    }

    fn update_status(&self, change: impl FnOnce(&mut ReloadStatus)) {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Re-reads the files now. On error the configuration in force is kept. Limits pushed
    /// over xDS have nothing to re-read: they change when the server pushes a version.
    pub async fn reload(&self, trigger: Trigger) -> Result<Outcome, ConfigErrors> {
        let Source::Files(path) = &self.source else {
            return Ok(Outcome::Unchanged);
        };
        let _one_at_a_time = self.serial.lock().await;
        let (path, options) = (path.clone(), self.options);
        let at = path.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&path, &options))
            .await
            .unwrap_or_else(|join| {
                Err(ConfigErrors(vec![ConfigError::file(
                    &at,
                    format!("reload task failed: {join}"),
                )]))
            });
        self.put_in_force(loaded, trigger).await
    }

    /// Puts a configuration compiled elsewhere (with [`compile`]) in force, as a reload of
    /// the files would; on error the configuration in force is kept and the error recorded.
    pub async fn apply(
        &self,
        loaded: Result<Loaded, ConfigErrors>,
        trigger: Trigger,
    ) -> Result<Outcome, ConfigErrors> {
        let _one_at_a_time = self.serial.lock().await;
        self.put_in_force(loaded, trigger).await
    }

    /// Swaps `loaded` in (unless it is the version in force), or records why it failed.
    async fn put_in_force(
        &self,
        loaded: Result<Loaded, ConfigErrors>,
        trigger: Trigger,
    ) -> Result<Outcome, ConfigErrors> {
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
                self.loaded.send_replace(true);
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
