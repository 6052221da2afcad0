//! What a node keeps on its own machine and needs before it talks to anyone: its
//! configuration, the layout of its data dir, its key file and unlock key, random identifiers, and the
//! offline check of a stopped manager's store.
//!
//! Boundary: imports nothing else from this crate; every other room may import it.

pub mod config;
pub mod data_dir;
pub(crate) mod ids;
pub mod key_file;
pub(crate) mod store_check;
pub mod unlock_key;
