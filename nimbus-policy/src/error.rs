//! Errors of loading a policy. Every one carries the position in the YAML where
//! the problem is, when there is one.

use std::fmt;

/// 1-based line and column in the policy text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not YAML, or YAML of the wrong shape (unknown field, wrong type, missing field).
    #[error("{}{message}", position.map(|p| format!("{p}: ")).unwrap_or_default())]
    Syntax {
        message: String,
        position: Option<Position>,
    },

    /// Well-formed YAML whose content is wrong (bad glob, bad regex, bad version…).
    #[error("{}{field}: {message}", position.map(|p| format!("{p}: ")).unwrap_or_default())]
    Invalid {
        field: String,
        message: String,
        position: Option<Position>,
    },

    #[error("reading {path}: {message}")]
    Io { path: String, message: String },
}

impl Error {
    pub fn position(&self) -> Option<Position> {
        match self {
            Error::Syntax { position, .. } | Error::Invalid { position, .. } => *position,
            Error::Io { .. } => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
