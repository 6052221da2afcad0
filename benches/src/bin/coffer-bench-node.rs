//! `coffer`, built inside the benches package so the cluster benchmarks can run it.

fn main() -> std::process::ExitCode {
    coffer_node::cli::main()
}
