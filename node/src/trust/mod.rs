//! Trust, for every kind of node: the cluster PKI, TLS configurations, join tokens and API
//! tokens, a node's credentials on disk, the join flow, and certificate renewal.
//!
//! Boundary: role-neutral. Imports only [`crate::local`]; never `manager`, `http` or
//! `worker`, which all build on it.

pub(crate) mod api_token;
pub mod credentials;
pub(crate) mod join;
pub(crate) mod join_token;
pub mod pki;
pub(crate) mod renewal;
pub mod tls;
