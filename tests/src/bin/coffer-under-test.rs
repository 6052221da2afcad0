//! `coffer`, built inside the tests package so integration tests can run it as a process.

fn main() -> std::process::ExitCode {
    coffer_node::cli::main()
}
