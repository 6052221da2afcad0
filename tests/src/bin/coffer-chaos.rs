//! `coffer-chaos`: runs the fault harness against the `coffer` binary beside it (or
//! `--bin PATH`) and prints what it found. Exits 0 when every invariant held, 1 when one
//! did not, 2 on bad arguments or when the harness itself failed. Needs root: each manager
//! runs in a network namespace of its own.
//!
//! ```text
//! coffer-chaos --profile quick|full|full5|soak [--seed N] [--faults K1,K2] [--bin PATH]
//! ```
//!
//! `--faults` draws only from the named faults (as the report names them); with
//! `COFFER_CHAOS_KEEP=1` the data dirs and the nodes' logs are kept for a post-mortem.

use std::path::PathBuf;
use std::process::ExitCode;

use coffer_tests::chaos::{self, Profile};

fn usage(problem: &str) -> ExitCode {
    eprintln!("coffer-chaos: {problem}");
    eprintln!("usage: coffer-chaos --profile quick|full|full5|soak [--seed N] [--faults K1,K2] [--bin PATH]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut profile, mut seed, mut bin, mut faults) = (None, None, None, None);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().ok_or_else(|| format!("{what} needs a value"));
        let parsed = match a.as_str() {
            "--profile" => value("--profile").map(|v| profile = Some(v)),
            "--seed" => value("--seed").and_then(|v| {
                v.parse::<u64>().map(|s| seed = Some(s)).map_err(|_| format!("--seed {v:?} is not a whole number"))
            }),
            "--bin" => value("--bin").map(|v| bin = Some(PathBuf::from(v))),
            "--faults" => value("--faults")
                .and_then(|v| {
                    v.split(',')
                        .map(chaos::FaultKind::parse)
                        .collect::<anyhow::Result<Vec<_>>>()
                        .map_err(|e| e.to_string())
                })
                .map(|k| faults = Some(k)),
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(e) = parsed {
            return usage(&e);
        }
    }
    let mut profile = match Profile::named(profile.as_deref().unwrap_or("quick")) {
        Ok(p) => p,
        Err(e) => return usage(&e.to_string()),
    };
    if let Some(kinds) = faults {
        profile.kinds = kinds;
    }
    let bin = bin.or_else(|| {
        let here = std::env::current_exe().ok()?;
        let dir = here.parent()?;
        ["coffer", "coffer-under-test"].iter().map(|n| dir.join(n)).find(|p| p.exists())
    });
    let Some(bin) = bin else { return usage("no coffer binary beside this one; pass --bin PATH") };
    let seed = seed.unwrap_or_else(rand::random);
    eprintln!("coffer-chaos: profile {}, seed {seed} (replay with --seed {seed})", profile.name);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return usage(&format!("cannot start a runtime: {e}")),
    };
    match runtime.block_on(chaos::run(&bin, &profile, seed)) {
        Ok(report) => {
            println!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("coffer-chaos: the harness failed (seed {seed}): {e:#}");
            ExitCode::from(2)
        }
    }
}
