//! Runtime tenants in this process (memory mode), saved under `--state-dir` when given.
//!
//! The whole state (tenants, version and audit log) is one JSON file, `tenants.json`,
//! replaced atomically at every commit ([`crate::atomic_file::replace`]): a crash leaves the
//! state before the change or after it, audit entry included. A file that cannot be read is a
//! startup error, never silently replaced. One process per directory: it holds a lock on
//! `tenants.lock` there while it runs. A commit runs to its end (applied, saved, or taken back
//! if the save failed) even if its caller stops waiting, so memory and file never disagree.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::record::{AuditEntry, TenantRecord};
use super::state::{Commit, Image, MAX_AUDIT, StateError, TenantState};

/// The state file's name inside `--state-dir`.
pub const FILE: &str = "tenants.json";

/// The lock file's name inside `--state-dir`.
pub const LOCK: &str = "tenants.lock";

/// The file's format; a different one is refused.
const FORMAT: u32 = 1;

/// Runtime tenants kept here, and saved to a file if one is given.
#[derive(Debug)]
pub struct LocalState {
    file: Option<PathBuf>,
    saved: Arc<Mutex<Saved>>,
    /// Held (locked) while this process uses the directory.
    _lock: Option<std::fs::File>,
}

/// Everything kept, as the file holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    format: u32,
    version: u64,
    tenants: Vec<TenantRecord>,
    /// Oldest first.
    audit: VecDeque<AuditEntry>,
}

impl LocalState {
    /// State in memory only: lost at restart.
    pub fn in_memory() -> Self {
        Self {
            file: None,
            saved: Arc::new(Mutex::new(Saved {
                format: FORMAT,
                ..Saved::default()
            })),
            _lock: None,
        }
    }

    /// State saved in `dir` (created if missing, readable by its owner only), starting from
    /// what it holds.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let file = dir.join(FILE);
        let failed = |source| StateError::File {
            path: file.clone(),
            source,
        };
        create_private_dir(dir).map_err(failed)?;
        let lock = lock(&dir.join(LOCK))?;
        let saved = match std::fs::read(&file) {
            Ok(bytes) => {
                let saved: Saved =
                    serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                        path: file.clone(),
                        why: e.to_string(),
                    })?;
                if saved.format != FORMAT {
                    return Err(StateError::Corrupt {
                        path: file,
                        why: format!("format {} (this tollgate reads {FORMAT})", saved.format),
                    });
                }
                saved
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Saved {
                format: FORMAT,
                ..Saved::default()
            },
            Err(error) => return Err(failed(error)),
        };
        Ok(Self {
            file: Some(file),
            saved: Arc::new(Mutex::new(saved)),
            _lock: Some(lock),
        })
    }
}

/// Locks `path` (created if missing) for this process: a second tollgate on the same
/// directory is a startup error, not a second writer.
fn lock(path: &Path) -> Result<std::fs::File, StateError> {
    let failed = |source| StateError::File {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(failed(std::io::Error::other(
            "another process holds this lock: one tollgate per --state-dir",
        ))),
        Err(std::fs::TryLockError::Error(error)) => Err(failed(error)),
    }
}

/// One commit's data, owned, so it can run in a task of its own.
struct Owned {
    domain: String,
    id: String,
    expected: Option<String>,
    next: Option<TenantRecord>,
    audit: AuditEntry,
}

impl Owned {
    fn of(commit: Commit<'_>) -> Self {
        Self {
            domain: commit.domain.to_owned(),
            id: commit.id.to_owned(),
            expected: commit.expected.map(str::to_owned),
            next: commit.next.cloned(),
            audit: commit.audit.clone(),
        }
    }

    fn commit(&self) -> Commit<'_> {
        Commit {
            domain: &self.domain,
            id: &self.id,
            expected: self.expected.as_deref(),
            next: self.next.as_ref(),
            audit: &self.audit,
        }
    }
}

impl LocalState {
    /// Applies `commit` to `saved` and saves it to `file`, taking it back if the save fails.
    async fn commit_now(
        saved: &Mutex<Saved>,
        file: Option<&Path>,
        commit: Commit<'_>,
    ) -> Result<bool, StateError> {
        let mut saved = saved.lock().await;
        let position = saved
            .tenants
            .iter()
            .position(|t| t.domain == commit.domain && t.id == commit.id);
        let current = position.map(|i| saved.tenants[i].revision.as_str());
        if current != commit.expected {
            return Ok(false);
        }
        let undo = saved.apply(position, commit);
        if let Some(file) = file
            && let Err(source) = save(file, &saved).await
        {
            saved.undo(undo);
            return Err(StateError::File {
                path: file.to_owned(),
                source,
            });
        }
        Ok(true)
    }
}

/// What [`Saved::apply`] changed, to take it back.
struct Undo {
    record: RecordUndo,
    /// The oldest audit entry, if the new one pushed it out.
    dropped: Option<AuditEntry>,
}

enum RecordUndo {
    Nothing,
    Added,
    Replaced(usize, TenantRecord),
    Removed(usize, TenantRecord),
}

impl Saved {
    /// Applies `commit` to the record at `position` (where it is, if it exists).
    fn apply(&mut self, position: Option<usize>, commit: Commit<'_>) -> Undo {
        self.version += 1;
        let record = match (position, commit.next) {
            (Some(i), Some(next)) => {
                RecordUndo::Replaced(i, std::mem::replace(&mut self.tenants[i], next.clone()))
            }
            (Some(i), None) => RecordUndo::Removed(i, self.tenants.remove(i)),
            (None, Some(next)) => {
                self.tenants.push(next.clone());
                RecordUndo::Added
            }
            (None, None) => RecordUndo::Nothing,
        };
        self.audit.push_back(commit.audit.clone());
        let dropped = if self.audit.len() > MAX_AUDIT {
            self.audit.pop_front()
        } else {
            None
        };
        Undo { record, dropped }
    }

    /// Takes back what [`Saved::apply`] did.
    fn undo(&mut self, undo: Undo) {
        self.version -= 1;
        self.audit.pop_back();
        if let Some(entry) = undo.dropped {
            self.audit.push_front(entry);
        }
        match undo.record {
            RecordUndo::Nothing => {}
            RecordUndo::Added => {
                self.tenants.pop();
            }
            RecordUndo::Replaced(i, old) => self.tenants[i] = old,
            RecordUndo::Removed(i, old) => self.tenants.insert(i, old),
        }
    }
}

/// Writes `saved` to `file`, atomically, off the async workers.
async fn save(file: &Path, saved: &Saved) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(saved)?;
    let path = file.to_owned();
    tokio::task::spawn_blocking(move || crate::atomic_file::replace(&path, &bytes))
        .await
        .map_err(std::io::Error::other)?
}

/// Creates `dir` if it is missing, readable by its owner only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

impl TenantState for LocalState {
    fn load(&self) -> BoxFuture<'_, Result<Image, StateError>> {
        async {
            let saved = self.saved.lock().await;
            Ok(Image {
                version: saved.version,
                tenants: saved.tenants.clone(),
            })
        }
        .boxed()
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        async { Ok(self.saved.lock().await.version) }.boxed()
    }

    fn commit<'a>(&'a self, commit: Commit<'a>) -> BoxFuture<'a, Result<bool, StateError>> {
        // In a task of its own: a caller that stops waiting cannot cut it between applying and
        // saving (or taking back).
        let (saved, file, owned) = (self.saved.clone(), self.file.clone(), Owned::of(commit));
        let task =
            tokio::spawn(
                async move { Self::commit_now(&saved, file.as_deref(), owned.commit()).await },
            );
        async move {
            // Never cancelled: a failure to join is a panic in the task, passed on as it was.
            task.await
                .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
        }
        .boxed()
    }

    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditEntry>, StateError>> {
        async move {
            let saved = self.saved.lock().await;
            Ok(saved.audit.iter().rev().take(limit).cloned().collect())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::record::Action;
    use crate::tenants::tests::audit;

    fn record(id: &str, revision: &str) -> TenantRecord {
        TenantRecord {
            domain: "saas".into(),
            id: id.into(),
            tier: "free".into(),
            labels: Default::default(),
            keys: Vec::new(),
            created_at: "2026-05-01T12:00:00Z".into(),
            updated_at: "2026-05-01T12:00:00Z".into(),
            revision: revision.into(),
        }
    }

    async fn commit(
        state: &LocalState,
        id: &str,
        expected: Option<&str>,
        next: Option<&TenantRecord>,
        action: Action,
    ) -> bool {
        state
            .commit(Commit {
                domain: "saas",
                id,
                expected,
                next,
                audit: &audit(id, action),
            })
            .await
            .unwrap()
    }

    #[test]
    fn one_process_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalState::open(dir.path()).unwrap();
        let second = LocalState::open(dir.path()).unwrap_err().to_string();
        assert!(
            second.contains(LOCK) && second.contains("one tollgate per --state-dir"),
            "{second}"
        );
        drop(first);
        LocalState::open(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn commits_apply_only_to_the_revision_they_were_made_from() {
        let state = LocalState::in_memory();
        let first = record("acme", "r1");
        assert!(commit(&state, "acme", None, Some(&first), Action::TenantCreated).await);
        // Created already: a second creation is stale.
        assert!(!commit(&state, "acme", None, Some(&first), Action::TenantCreated).await);
        let second = record("acme", "r2");
        assert!(
            !commit(
                &state,
                "acme",
                Some("r0"),
                Some(&second),
                Action::TenantUpdated
            )
            .await
        );
        assert!(
            commit(
                &state,
                "acme",
                Some("r1"),
                Some(&second),
                Action::TenantUpdated
            )
            .await
        );
        let image = state.load().await.unwrap();
        assert_eq!((image.version, image.tenants), (2, vec![second]));
        assert!(commit(&state, "acme", Some("r2"), None, Action::TenantDeleted).await);
        assert!(state.load().await.unwrap().tenants.is_empty());
        let actions = crate::tenants::tests::actions(&state).await;
        assert_eq!(
            actions,
            [
                Action::TenantDeleted,
                Action::TenantUpdated,
                Action::TenantCreated
            ]
        );
    }

    #[tokio::test]
    async fn a_state_dir_survives_a_restart_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = LocalState::open(dir.path()).unwrap();
        let acme = record("acme", "r1");
        assert!(commit(&state, "acme", None, Some(&acme), Action::TenantCreated).await);
        drop(state);
        let reopened = LocalState::open(dir.path()).unwrap();
        let image = reopened.load().await.unwrap();
        assert_eq!((image.version, image.tenants), (1, vec![acme]));
        assert_eq!(reopened.audit(10).await.unwrap().len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(reopened);
        std::fs::write(dir.path().join(FILE), b"{\"format\": 1, \"vers").unwrap();
        let error = LocalState::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("unreadable"), "{error}");
    }

    #[tokio::test]
    async fn a_change_that_cannot_be_saved_is_not_made() {
        let dir = tempfile::tempdir().unwrap();
        let state = LocalState::open(dir.path()).unwrap();
        let acme = record("acme", "r1");
        assert!(commit(&state, "acme", None, Some(&acme), Action::TenantCreated).await);
        // A directory where the file goes: the rename over it fails.
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        std::fs::create_dir_all(dir.path().join(FILE).join("in-the-way")).unwrap();
        let error = state
            .commit(Commit {
                domain: "saas",
                id: "acme",
                expected: Some("r1"),
                next: None,
                audit: &audit("acme", Action::TenantDeleted),
            })
            .await
            .unwrap_err();
        assert!(matches!(error, StateError::File { .. }), "{error}");
        let image = state.load().await.unwrap();
        assert_eq!((image.version, image.tenants), (1, vec![acme]));
        assert_eq!(state.audit(10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_audit_log_keeps_the_newest_entries() {
        let state = LocalState::in_memory();
        let mut revision: Option<String> = None;
        for n in 0..MAX_AUDIT + 5 {
            let next = record("acme", &n.to_string());
            assert!(
                commit(
                    &state,
                    "acme",
                    revision.as_deref(),
                    Some(&next),
                    Action::TenantUpdated
                )
                .await
            );
            revision = Some(n.to_string());
        }
        assert_eq!(state.audit(usize::MAX).await.unwrap().len(), MAX_AUDIT);
    }
}
