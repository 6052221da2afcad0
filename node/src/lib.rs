//! The `coffer` daemon and CLI as a library: `main.rs` parses arguments and calls in here,
//! and the integration tests call the same functions.
//!
//! # Layout
//!
//! - [`manager`]: the composition root ([`manager::Manager::start`]) and the operations
//!   handlers share: propose with forwarding, linearizable reads, leader-only operations.
//! - [`bootstrap`]: `manager init` / `manager join`: data dir, keys, certificates, tokens.
//! - [`leader_ops`], [`membership`]: what only the leader does (admit, renew, change voters).
//! - [`raft_net`]: openraft's network over HTTPS with mutual TLS; snapshot streaming.
//! - [`server`], [`routes`], [`auth`], [`api_error`], [`extract`]: the listener, endpoints,
//!   caller roles, errors in the API's envelope.
//! - [`secrets_api`], [`services_api`], [`tokens_api`], [`openapi`]: the admin API for
//!   secrets, services and API tokens, and its generated OpenAPI document; [`validate`],
//!   [`constraints`], [`values`], [`api_token`]: input rules, placement constraints,
//!   value sealing, API token format.
//! - [`tls`], [`pki`], [`join_token`], [`renewal`]: certificates and trust.
//! - [`scheduler`], [`grants`], [`worker_api`]: placing tasks, leader-only grants and
//!   their redemption, the worker session on a manager.
//! - [`worker`]: the worker agent: session, heartbeats, grants, files on tmpfs.
//! - [`cli`], [`dev`]: the command line, `coffer dev`.
//! - [`metrics`]: `/metrics` in the Prometheus text format; [`ids`]: random identifiers.
//! - [`config`], [`data_dir`], [`key_file`], [`store_check`]: configuration and on-disk layout.

pub mod api_error;
pub mod api_token;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod cli_resources;
pub mod config;
pub mod constraints;
pub mod data_dir;
pub mod dev;
pub mod extract;
pub mod grants;
pub mod ids;
pub mod join_token;
pub mod key_file;
pub mod leader_ops;
pub mod manager;
pub mod membership;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod raft_net;
pub mod renewal;
pub mod routes;
pub mod scheduler;
pub mod secrets_api;
pub mod server;
pub mod services_api;
pub mod store_check;
pub mod tls;
pub mod tokens_api;
pub mod validate;
pub mod values;
pub mod worker;
pub mod worker_api;
