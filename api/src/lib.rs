//! Coffer's wire contract: what crosses the HTTPS API, and the typed client that speaks it.
//!
//! # Layout
//!
//! - [`error`]: the error envelope `{"error": {"code", "message"}}` and its stable codes.
//! - [`cluster`]: join, renew, nodes, join tokens, cluster status.
//! - [`secrets`], [`services`], [`tokens`]: the admin API's resources.
//! - [`worker`]: the worker session: assignments, grants, redemption.
//! - [`rules`]: input rules the CLI and the manager share (names, labels, sizes, the
//!   `--secret` spec grammar, placement constraints).
//! - [`time`]: timestamps as RFC 3339 text.
//! - [`client`]: the typed async client (CLI, tests, benchmarks, workers), over [`tls`].
//!
//! Boundary: no RocksDB, no openraft. Storage types are converted to these by hand in
//! `node`; a change here is a change of the public API (and of `api/openapi.json`).

pub mod client;
pub mod cluster;
pub mod error;
pub mod events;
pub mod rules;
pub mod secrets;
pub mod services;
pub mod time;
pub mod tls;
pub mod tokens;
pub mod worker;
