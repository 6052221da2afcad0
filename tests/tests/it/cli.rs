//! The CLI as a new user meets it, against a real 3-manager cluster: values from a pipe,
//! readable tables, JSON for scripts, and exit codes that say what happened.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use coffer_tests::Cluster;

use crate::bin;

struct Cli<'a> {
    c: &'a Cluster,
    manager: usize,
}

impl Cli<'_> {
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(bin())
            .args(args)
            .env("COFFER_ADDR", &self.c.managers[self.manager].addr)
            .env("COFFER_CLIENT_DIR", self.c.client_dir())
            .env("COFFER_LOG", "error")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn coffer");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
        }
        child.wait_with_output().expect("coffer finished")
    }

    fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.run(args, stdin);
        assert!(out.status.success(), "coffer {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 output")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_users_session_with_secrets_and_services() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let leader = c.leader_seen_by(0).await.expect("leader");
    // Through a follower, as a user pointed at any manager would be.
    let cli = Cli { c: &c, manager: (c.index_of(leader).expect("leader") + 1) % 3 };
    let value = b"s3cr3t-CANARY-from-a-pipe";

    // A health check's question: ready (exit 0) here; a manager that is gone is not (3).
    assert!(cli.ok(&["cluster", "ready"], None).starts_with("ready "));
    let gone = coffer_tests::coffer(bin(), &["cluster", "ready"], "127.0.0.1:1", &c.client_dir());
    assert_eq!(gone.status.code(), Some(3), "{}", String::from_utf8_lossy(&gone.stderr));

    let id = cli.ok(&["secret", "create", "db_password", "-", "--label", "team=db"], Some(value));
    assert_eq!(id.trim().len(), 16, "create prints the new id: {id:?}");

    let table = cli.ok(&["secret", "ls"], None);
    assert!(table.lines().next().is_some_and(|h| h.contains("NAME")), "{table}");
    assert!(table.contains("db_password"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&cli.ok(&["secret", "ls", "--format", "json"], None)).expect("json");
    assert_eq!(json[0]["name"], "db_password");
    assert!(!cli.ok(&["secret", "inspect", "db_password"], None).contains("CANARY"), "inspect shows the value");

    cli.ok(&["service", "create", "api", "--secret", "source=db_password,target=db,mode=0400"], None);
    let svc: serde_json::Value = serde_json::from_str(&cli.ok(&["service", "inspect", "api"], None)).expect("json");
    assert_eq!(svc["secrets"][0]["target"], "db");
    assert_eq!(svc["secrets"][0]["mode"], 0o400);

    // Refused while referenced: exit code 1, and the error names the service and the way out.
    let refused = cli.run(&["secret", "rm", "db_password"], None);
    assert_eq!(refused.status.code(), Some(1), "a refusal exits 1");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("api") && err.contains("--secret-rm"), "{err}");

    cli.ok(&["service", "update", "api", "--secret-rm", "db_password"], None);
    cli.ok(&["secret", "rm", "db_password"], None);
    assert!(!cli.ok(&["secret", "ls", "-q"], None).contains("db_password"));

    // A value is never taken from an argument: a file that does not exist is a local error (2).
    let missing = cli.run(&["secret", "create", "x", "/no/such/file"], None);
    assert_eq!(missing.status.code(), Some(2));
    // An unreachable manager is exit code 3.
    let mut away = cli.run(&["secret", "ls"], None);
    away.status = Command::new(bin())
        .args(["secret", "ls", "--addr", "127.0.0.1:1"])
        .env("COFFER_CLIENT_DIR", c.client_dir())
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(away.status.code(), Some(3));
    // And bad input from the user is refused without a panic.
    let bad = cli.run(&["service", "create", "web", "--secret", "source=nope,mode=999"], None);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// Regression: `coffer secret ls | head -1` panicked on the broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_to_a_reader_that_goes_away_is_no_panic() {
    let c = Cluster::start(bin(), 1, &[]).await.expect("cluster");
    let admin = c.admin(0);
    for i in 0..200 {
        admin.create_secret(&format!("many-{i}"), b"v", std::collections::BTreeMap::new()).await.expect("create");
    }
    let mut child = Command::new(bin())
        .args(["secret", "ls"])
        .env("COFFER_ADDR", &c.managers[0].addr)
        .env("COFFER_CLIENT_DIR", c.client_dir())
        .env("COFFER_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coffer");
    drop(child.stdout.take()); // the reader goes away before the table is printed
    let out = child.wait_with_output().expect("coffer finished");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
