//! Watching the configuration path for changes.
//!
//! The watcher observes the directory (or, for a single file, its parent directory), so it
//! sees in-place writes, rename-over (editors, `sed -i`, `mv`), new and deleted files, and the
//! Kubernetes ConfigMap swap of the `..data` symlink. Access events are ignored (reading the
//! files to reload them would otherwise trigger the next reload), except close-after-write.
//! Bursts are debounced: a reload starts once the path has been quiet for [`QUIET`], or at the
//! latest [`MAX_DELAY`] after the first event. For a single file, only events about that file
//! (and ConfigMap `..` entries) count. A reload of unchanged files is a no-op, so spurious
//! events cost one read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Reloader, Trigger};

/// How long the path must be quiet before a reload.
pub const QUIET: Duration = Duration::from_millis(150);

/// The longest a burst of events can delay a reload, so a busy directory cannot starve it.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// Whether an event can mean the configuration changed.
fn is_change(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether an event concerns the configuration at `path`: for a directory, anything inside it
/// and the directory entry itself (replaced, or a symlink to it retargeted); for a single file,
/// that file and the ConfigMap's `..`-prefixed entries beside it.
fn concerns(event: &Event, path: &Path, is_dir: bool) -> bool {
    event.paths.iter().any(|p| {
        if is_dir {
            p.starts_with(path) || p.file_name() == path.file_name()
        } else {
            p.file_name().is_some_and(|name| {
                Some(name) == path.file_name() || name.to_string_lossy().starts_with("..")
            })
        }
    })
}

/// The file watch on a configuration path.
pub struct ConfigWatch {
    watcher: RecommendedWatcher,
    /// The directory whose entries are the configuration.
    dir: PathBuf,
}

impl std::fmt::Debug for ConfigWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatch")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ConfigWatch {
    /// Watches `dir` again, so a directory that was replaced, or a symlink that now points
    /// elsewhere, is followed: inotify watches an inode, not a name.
    fn rearm(&mut self) {
        let _ = self.watcher.unwatch(&self.dir);
        if let Err(error) = self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            tracing::warn!(%error, dir = %self.dir.display(), "cannot watch the configuration directory");
        }
    }
}

/// Starts watching `path`; the receiver yields once per batch of change events.
pub fn watch(path: &Path) -> notify::Result<(ConfigWatch, mpsc::Receiver<()>)> {
    // Events name absolute paths: a relative --config (the quick start's examples/config)
    // must be absolute to be recognised in them. Not canonical: a symlink stays a name.
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let path = absolute.as_path();
    let (tx, rx) = mpsc::channel(1);
    let is_dir = path.is_dir();
    let parent_of = |p: &Path| {
        p.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let watched = path.to_path_buf();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<Event>| match event {
            // A full channel already holds a pending wake-up, which is all that is needed.
            Ok(event) if is_change(&event) && concerns(&event, &watched, is_dir) => {
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "file watcher error"),
        })?;
    let dir = if is_dir {
        path.to_path_buf()
    } else {
        parent_of(path)
    };
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    if is_dir {
        // The directory's own entry lives in its parent: watch that too, to see it replaced.
        let parent = parent_of(path);
        if parent != dir {
            watcher.watch(&parent, RecursiveMode::NonRecursive)?;
        }
    }
    Ok((ConfigWatch { watcher, dir }, rx))
}

/// Reloads after each debounced batch of changes until `events` closes or `stop` resolves.
pub async fn run(
    reloader: Arc<Reloader>,
    watch: ConfigWatch,
    events: mpsc::Receiver<()>,
    stop: impl std::future::Future<Output = ()>,
) {
    on_changes(watch, events, stop, || {
        let reloader = reloader.clone();
        // Errors are logged and kept in the status by the reloader.
        async move { drop(reloader.reload(Trigger::Watch).await) }
    })
    .await;
}

/// Calls `changed` after each debounced batch of changes until `events` closes or `stop`
/// resolves, re-arming the watch first.
pub async fn on_changes<F: std::future::Future<Output = ()>>(
    mut watch: ConfigWatch,
    mut events: mpsc::Receiver<()>,
    stop: impl std::future::Future<Output = ()>,
    mut changed: impl FnMut() -> F,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            event = events.recv() => if event.is_none() { return },
        }
        let latest = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            let quiet_until = (tokio::time::Instant::now() + QUIET).min(latest);
            match tokio::time::timeout_at(quiet_until, events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_quiet_or_max_delay) => break,
            }
        }
        watch.rearm();
        changed().await;
    }
}
