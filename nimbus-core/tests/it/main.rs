//! Integration tests of nimbus-core: the store suite on SQLite and PostgreSQL, and
//! the control-plane HTTP API driven through its router.

mod api;
mod github;
mod store;
