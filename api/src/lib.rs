//! Coffer's wire contract: what crosses the HTTPS API, and nothing else.
//!
//! # Layout
//!
//! - [`cluster`]: join, renew, nodes, join tokens, cluster status.
//! - [`error`]: the error envelope `{"error": {"code", "message"}}` and its stable codes.
//!
//! Boundary: no RocksDB, no openraft. Storage types are converted to these by hand in
//! `node`; a change here is a change of the public API.

pub mod cluster;
pub mod error;
