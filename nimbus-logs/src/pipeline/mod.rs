//! The logging pipeline service (filled in below).
