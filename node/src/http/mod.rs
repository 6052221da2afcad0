//! A manager's HTTPS surface: the accept loop, the router and its layers, caller roles,
//! the error envelope, one file per resource, Raft RPC, health and metrics, and the
//! generated OpenAPI document.
//!
//! Boundary: the only room that knows HTTP on the server side. Imports `manager`, `trust`
//! and `local`; nothing below imports it.

pub(crate) mod admins;
pub(crate) mod auth;
pub(crate) mod autolock;
pub(crate) mod budget;
pub(crate) mod docker;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod extract;
pub mod fuzz;
pub(crate) mod health;
pub(crate) mod join;
pub(crate) mod link;
pub mod locked;
pub(crate) mod nodes;
pub(crate) mod openapi;
pub(crate) mod raft;
pub(crate) mod router;
pub(crate) mod run;
pub(crate) mod secrets;
pub mod server;
pub(crate) mod services;
pub(crate) mod snapshot;
pub(crate) mod task_status;
pub(crate) mod tokens;
pub(crate) mod worker;

#[cfg(test)]
mod garbage_tests;
