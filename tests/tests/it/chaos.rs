//! The fault harness's quick profile: a handful of faults on three managers in network
//! namespaces of their own, concurrent clients, every secret's history checked for
//! linearizability, and the end-of-run invariants. The full profiles are run by hand (see
//! README.md, "Faults").

use coffer_tests::chaos::{self, Profile};

use crate::bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_fault_profile_keeps_every_invariant() {
    let seed = std::env::var("COFFER_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let profile = Profile::named("quick").expect("the quick profile");
    let report = chaos::run(bin(), &profile, seed).await.unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
    println!("{report}");
    assert!(report.ok(), "replay with COFFER_CHAOS_SEED={seed}:\n{report}");
    assert!(report.operations > 50, "too little happened:\n{report}");
}

#[test]
fn bad_profiles_are_refused_with_a_clear_error() {
    let e = Profile::named("fast").expect_err("an unknown profile");
    assert!(e.to_string().contains("one of quick, full, full5, soak"), "{e}");
}

#[test]
fn bad_arguments_to_the_harness_get_a_clear_error() {
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_coffer-chaos")).args(args).output();
    for (args, says) in [
        (&["--seed", "abc"][..], "--seed \"abc\" is not a whole number"),
        (&["--profile", "fast"][..], "unknown profile \"fast\""),
        (&["--seed"][..], "--seed needs a value"),
        (&["--bogus"][..], "unknown argument \"--bogus\""),
        (&["--faults", "KillLeader,Meteor"][..], "unknown fault \"Meteor\": one of KillLeader"),
    ] {
        let out = run(args).expect("run coffer-chaos");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) && err.contains("usage:"), "{args:?}: {err}");
    }
}
