//! Configuration errors that name the file, the line and the descriptor.

use std::fmt;
use std::path::PathBuf;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or directory) at fault.
    pub file: PathBuf,
    /// 1-based line, where one is known.
    pub line: Option<usize>,
    /// The descriptor's composite key (`domain.key_value.key`), where the problem is in one.
    pub descriptor: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A problem with a whole file.
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            descriptor: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(descriptor) = &self.descriptor {
            write!(f, ": descriptor '{descriptor}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}
