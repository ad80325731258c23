//! The cross-process end-to-end suite: real binaries, loopback ports, real services.

mod control_plane;
mod logging;
mod policy;
mod vm;
