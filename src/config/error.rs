//! Configuration errors: each names the file, the key path inside it, and the reason.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path such as `pools.web.backends[1].weight`; empty for whole-file errors.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

/// Every error found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn push(&mut self, file: &Path, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_key_and_reason_one_per_line() {
        let mut errs = ConfigErrors::default();
        errs.push(
            Path::new("t/a.toml"),
            "pools.web.retries",
            "11 is out of range",
        );
        errs.push(Path::new("t/b.toml"), "", "invalid TOML");
        assert_eq!(
            errs.to_string(),
            "t/a.toml: pools.web.retries: 11 is out of range\nt/b.toml: invalid TOML"
        );
        assert_eq!(errs.len(), 2);
        // Usable with `?` into anyhow and the like.
        let _: &dyn std::error::Error = &errs;
    }
}
