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

use std::ffi::OsStr;
use std::path::Path;
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

/// Whether an event concerns the configuration: anything in a watched directory, or, for a
/// single file, that file and the ConfigMap's `..`-prefixed entries beside it.
fn concerns(event: &Event, file: Option<&OsStr>) -> bool {
    let Some(file) = file else {
        return true;
    };
    event
        .paths
        .iter()
        .filter_map(|p| p.file_name())
        .any(|name| name == file || name.to_string_lossy().starts_with(".."))
}

/// Starts watching `path`; the receiver yields once per batch of change events.
pub fn watch(path: &Path) -> notify::Result<(RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let file = if path.is_dir() {
        None
    } else {
        path.file_name().map(OsStr::to_owned)
    };
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<Event>| match event {
            // A full channel already holds a pending wake-up, which is all that is needed.
            Ok(event) if is_change(&event) && concerns(&event, file.as_deref()) => {
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "file watcher error"),
        })?;
    let dir = if path.is_dir() {
        path
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    };
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// Reloads after each debounced batch of changes until `events` closes.
pub async fn run(reloader: Arc<Reloader>, mut events: mpsc::Receiver<()>) {
    while events.recv().await.is_some() {
        let latest = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            let quiet_until = (tokio::time::Instant::now() + QUIET).min(latest);
            match tokio::time::timeout_at(quiet_until, events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_quiet_or_max_delay) => break,
            }
        }
        // Errors are logged and kept in the status by the reloader.
        let _ = reloader.reload(Trigger::Watch).await;
    }
}
