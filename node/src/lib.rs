//! The `coffer` daemon and CLI as a library: `main.rs` parses arguments and calls in here,
//! and the integration tests call the same functions.
//!
//! # Layout
//!
//! - [`data_dir`]: where a manager keeps what (store, key file).
//! - [`key_file`]: the key-encryption key of a manager without autolock.
//! - [`store_check`]: `coffer store check`, an offline integrity check of a data dir.

pub mod data_dir;
pub mod key_file;
pub mod store_check;
