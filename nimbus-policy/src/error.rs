//! Errors of loading a policy. Every one carries the position in the YAML where
//! the problem is, when there is one.

use std::fmt;

/// 1-based line and column in the policy text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, counting from 1.
    pub line: usize,
    /// Column, counting from 1.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a policy could not be loaded. `Display` puts the position, when known, in front
/// of the message (`3:14: …`); [`describe_error`](crate::describe_error) adds the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not YAML, or YAML of the wrong shape (unknown field, wrong type, missing field).
    #[error("{}{message}", position.map(|p| format!("{p}: ")).unwrap_or_default())]
    Syntax {
        /// What is wrong, as the YAML parser says it, without its position.
        message: String,
        /// Where in the text, when the parser knows.
        position: Option<Position>,
    },

    /// Well-formed YAML whose content is wrong (bad glob, bad regex, bad version…).
    #[error("{}{field}: {message}", position.map(|p| format!("{p}: ")).unwrap_or_default())]
    Invalid {
        /// Where the problem is: the field's path, such as `blocked_workflow_titles[0].pattern`,
        /// prefixed with `orgs.N.` for an org's rules.
        field: String,
        /// What is wrong with it.
        message: String,
        /// Where in the text, when known; problems found while compiling, after
        /// parsing, have none.
        position: Option<Position>,
    },

    /// The policy file could not be read.
    #[error("reading {path}: {message}")]
    Io {
        /// The file as given to [`Policy::from_path`](crate::Policy::from_path).
        path: String,
        /// The I/O error, in words.
        message: String,
    },
}

impl Error {
    /// The line and column of the problem, if known; always `None` for [`Error::Io`].
    pub fn position(&self) -> Option<Position> {
        match self {
            Error::Syntax { position, .. } | Error::Invalid { position, .. } => *position,
            Error::Io { .. } => None,
        }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
