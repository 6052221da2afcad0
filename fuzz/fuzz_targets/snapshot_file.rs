#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_node::http::fuzz::snapshot_file(data));
