//! Replacing a file atomically: a reader (or a restart after a crash) sees the old content or
//! the new one, never half of either.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file beside it, synced, then renamed over it,
/// and syncs the directory so the rename itself survives a crash. The file is created readable
/// by its owner only. An error means `path` was not replaced: once the rename is done, a
/// directory that cannot be synced is only logged (the new content is what readers see).
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| {
        let mut file = options.open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written?;
    #[cfg(unix)]
    if let Some(directory) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Err(error) = fs::File::open(directory).and_then(|d| d.sync_all())
    {
        tracing::warn!(path = %path.display(), %error, "replaced, but its directory could not be synced: a crash now may bring the old content back");
    }
    Ok(())
}
