//! Reads configuration files from a path: one YAML file, or a directory of them.
//!
//! In a directory, every `*.yaml` / `*.yml` entry at the top level is read (symlinks are
//! followed), in name order; hidden entries are skipped, which covers the `..data` and
//! timestamped directories of a Kubernetes ConfigMap mount.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::ConfigError;

/// A configuration file's name and contents.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// The largest configuration file read: checking is linear in size, but a file this large is
/// a mistake (a log, a binary), and a reload must not spend seconds on it.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads the configuration files at `path`.
pub fn read(path: &Path) -> Result<Vec<SourceFile>, ConfigError> {
    let files = list(path)?;
    files
        .into_iter()
        .map(|file| {
            let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if size > MAX_FILE_BYTES {
                return Err(ConfigError::file(
                    &file,
                    format!(
                        "file is {size} bytes, more than the {MAX_FILE_BYTES} a configuration file may have"
                    ),
                ));
            }
            match fs::read_to_string(&file) {
                Ok(text) => Ok(SourceFile { path: file, text }),
                Err(e) => Err(ConfigError::file(&file, format!("cannot read file: {e}"))),
            }
        })
        .collect()
}

/// The configuration files at `path`, in the order they are loaded.
pub fn list(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let metadata = fs::metadata(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read configuration path: {e}")))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = fs::read_dir(path)
        .map_err(|e| ConfigError::file(path, format!("cannot list directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| ConfigError::file(path, format!("cannot list directory: {e}")))?;
        let file = entry.path();
        if is_config_file(&file) && file.is_file() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(ConfigError::file(
            path,
            "no configuration files (*.yaml, *.yml) in this directory",
        ));
    }
    files.sort();
    Ok(files)
}

fn is_config_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_yields_its_yaml_files_in_order_skipping_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.yml", "a.yaml", ".hidden.yaml", "notes.txt"] {
            fs::write(dir.path().join(name), "domain: x").unwrap();
        }
        fs::create_dir(dir.path().join("..data")).unwrap();
        let names: Vec<_> = list(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yml"]);
    }

    #[test]
    fn an_empty_directory_or_missing_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = list(dir.path()).unwrap_err();
        assert!(err.message.contains("no configuration files"), "{err}");
        let err = read(&dir.path().join("missing.yaml")).unwrap_err();
        assert!(err.message.contains("cannot read"), "{err}");
    }
}
