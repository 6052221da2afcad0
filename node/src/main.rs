//! The `coffer` binary: everything happens in [`coffer_node::cli`].

fn main() -> std::process::ExitCode {
    coffer_node::cli::main()
}
