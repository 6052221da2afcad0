//! Integration tests: real `coffer` manager processes on 127.0.0.1, port 0, temporary data
//! dirs, mutual TLS. One test binary (link once, run everything under nextest).

mod api;
mod autolock;
mod chaos;
mod cli;
mod cluster;
mod compose;
mod docker;
mod events;
mod flood;
mod grants;
mod layout;
mod recovery;
mod runtime;
mod security;
mod workers;

use std::path::Path;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_coffer-under-test"))
}
