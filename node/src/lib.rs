//! The `coffer` daemon and CLI as a library: `main.rs` parses nothing and calls
//! [`cli::main`]; `coffer dev`, the benchmarks and the test harness start nodes through the
//! same [`start`] functions.
//!
//! # Layout
//!
//! Rooms, with imports running one way (down this list, never up):
//!
//! - [`cli`]: the command line: parser, exit codes, output, one file per command group.
//! - [`dev`]: `coffer dev`, a whole cluster in one process.
//! - [`start`]: the one entry for starting nodes (init, join, restart of managers and
//!   workers), assembling a manager from [`manager`] and [`http`].
//! - [`http`]: a manager's HTTPS surface: accept loop, router, caller roles, the error
//!   envelope, one file per resource, Raft RPC, health, OpenAPI.
//! - [`worker`]: the worker agent: session, heartbeats, grants, files on tmpfs, manifest.
//! - [`manager`]: the [`manager::Manager`] and what it does: forwarding, linearizable
//!   reads, leader operations, membership, grants, the scheduler, audit, Raft network.
//! - [`trust`]: PKI, TLS, join and API tokens, credentials, the join flow, renewal.
//! - [`local`]: configuration, data dir layout, key file, ids, `store check`.
//!
//! `worker` and `manager` sit side by side: neither imports the other. A test in
//! `tests/it/layout.rs` fails on an import that climbs this list or crosses between them.

/// Every binary built on this library (`coffer`, the test and benchmark nodes) allocates
/// with mimalloc: glibc's allocator kept what bursts and closed connections had used, so
/// a manager's memory only grew.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod cli;
pub(crate) mod dev;
pub mod http;
pub mod local;
pub mod manager;
pub mod start;
pub mod trust;
pub(crate) mod worker;
