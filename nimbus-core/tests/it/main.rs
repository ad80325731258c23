//! Integration tests of nimbus-core: the store suite on SQLite and PostgreSQL, the
//! control-plane HTTP API driven through its router, and the seam suite in process
//! and over HTTP.

mod analytics;
mod api;
mod dashboard;
mod github;
mod report;
mod roi;
mod seams;
mod serve;
mod store;
