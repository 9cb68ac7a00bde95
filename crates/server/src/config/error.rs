//! [`ConfigError`]: why a configuration could not be loaded, with the file,
//! line and column in front of the message, compiler style.

use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// A file is not valid YAML or breaks a rule; `line`/`column` are
    /// 1-based when known.
    #[error("{}", format_location(file, *line, *column, message))]
    Invalid {
        /// The file (or `<demo>` / `<text>`).
        file: String,
        /// The line, 1-based.
        line: Option<usize>,
        /// The column, 1-based.
        column: Option<usize>,
        /// What is wrong, prefixed with the field path.
        message: String,
    },
}

fn format_location(
    file: &str,
    line: Option<usize>,
    column: Option<usize>,
    message: &str,
) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}: {message}"),
        (Some(l), None) => format!("{file}:{l}: {message}"),
        _ => format!("{file}: {message}"),
    }
}

impl ConfigError {
    pub(crate) fn invalid(file: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_owned(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    pub(crate) fn from_yaml(file: &str, err: &serde_norway::Error) -> Self {
        let text = err.to_string();
        let location = err.location();
        // serde_norway appends " at line L column C"; the location is
        // reported in front instead, compiler style.
        let message = match (&location, text.rfind(" at line ")) {
            (Some(_), Some(at)) => text[..at].to_owned(),
            _ => text,
        };
        ConfigError::Invalid {
            file: file.to_owned(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message,
        }
    }

    /// The line of the problem, when known (1-based).
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Io { .. } => None,
        }
    }
}
