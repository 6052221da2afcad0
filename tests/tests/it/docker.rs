//! The docker CLI, unchanged, against Coffer's Docker-compatible API on a follower: secrets,
//! services with secret files on the workers, Swarm-style rotation in place, nodes; and
//! bad input answered in Docker's shape with nothing changed.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use coffer_tests::{coffer, eventually, Cluster, WorkerProc, DEADLINE};

use crate::bin;

/// The docker CLI with the environment `coffer client docker-env` printed, and a config
/// dir of its own (no context or credential helper of the machine's user).
struct Docker {
    env: Vec<(String, String)>,
    config: tempfile::TempDir,
}

impl Docker {
    fn from_env_output(stdout: &str) -> Self {
        let env: Vec<(String, String)> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        let config = tempfile::TempDir::new().expect("docker config dir");
        Self { env, config }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn run_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.config.path())
            .env("DOCKER_CONFIG", self.config.path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the docker CLI (install docker-cli or docker.io)");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(input).expect("write stdin");
        }
        child.wait_with_output().expect("docker")
    }

    /// Runs `docker ARGS`, which must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    fn ok_with(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.run_with(args, stdin);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `docker ARGS`, which must fail; returns its stderr.
    fn fails(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.run_with(args, stdin);
        assert!(!out.status.success(), "docker {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `--format '{{json .}}'` output, one object per line.
    fn json_lines(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--format", "{{json .}}"]);
        self.ok(&full)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

fn task_files(w: &WorkerProc, svc: &str, target: &str) -> Vec<PathBuf> {
    std::fs::read_dir(&w.secrets)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{svc}."))))
                .map(|d| d.join(target))
                .filter(|f| f.exists())
                .collect()
        })
        .unwrap_or_default()
}

fn holding(workers: &[WorkerProc], svc: &str, target: &str, value: &[u8]) -> usize {
    workers
        .iter()
        .flat_map(|w| task_files(w, svc, target))
        .filter(|f| std::fs::read(f).ok().as_deref() == Some(value))
        .count()
}

fn follower_env(c: &Cluster, follower: usize) -> Docker {
    let out = coffer(&c.bin, &["client", "docker-env"], &c.managers[follower].addr, &c.client_dir());
    assert!(out.status.success(), "docker-env: {}", String::from_utf8_lossy(&out.stderr));
    let d = Docker::from_env_output(&String::from_utf8_lossy(&out.stdout));
    let path = PathBuf::from(d.var("DOCKER_CERT_PATH").expect("DOCKER_CERT_PATH"));
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(Path::new(&path).join(f).is_file(), "{f} missing from {}", path.display());
    }
    assert_eq!(d.var("DOCKER_TLS_VERIFY"), Some("1"));
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_cli_manages_secrets_services_and_nodes_through_a_follower() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let workers = c.start_workers(2, &[]).await.expect("workers");
    let leader = c.leader_seen_by(0).await.expect("leader");
    let follower = (c.index_of(leader).expect("index") + 1) % 3;
    let d = follower_env(&c, follower);
    let started_at = unix_now();

    let version = d.ok(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(version.trim(), "1.41");
    let info = d.ok(&["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"]);
    assert_eq!(info.trim(), "active true");

    // Secrets: create from stdin, list, inspect.
    let id = d.ok_with(&["secret", "create", "db_password", "-"], Some(b"hunter2"));
    let id = id.trim().to_string();
    assert!(!id.is_empty());
    let listed = d.json_lines(&["secret", "ls"]);
    assert!(
        listed.iter().any(|s| s["Name"] == "db_password" && id.starts_with(s["ID"].as_str().unwrap_or("-"))),
        "{listed:?}"
    );
    let inspected: serde_json::Value =
        serde_json::from_str(&d.ok(&["secret", "inspect", "db_password"])).expect("json");
    assert_eq!(inspected[0]["ID"], id.as_str());
    assert_eq!(inspected[0]["Spec"]["Name"], "db_password");
    assert!(!d.ok(&["secret", "inspect", "db_password"]).contains("hunter2"), "a value came back");

    // A service with the secret as a file: it lands on both workers with its mode.
    d.ok(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "2",
        "--secret",
        "source=db_password,target=db,mode=0400",
        "busybox",
        "sleep",
        "1d",
    ]);
    eventually("the secret on both workers", DEADLINE, || async {
        (holding(&workers, "api", "db", b"hunter2") == 2).then_some(())
    })
    .await
    .expect("delivered");
    for f in workers.iter().flat_map(|w| task_files(w, "api", "db")) {
        assert_eq!(std::fs::metadata(&f).expect("stat").mode() & 0o777, 0o400, "{}", f.display());
    }
    let ps = d.json_lines(&["service", "ps", "api"]);
    assert_eq!(ps.len(), 2, "{ps:?}");
    assert!(
        ps.iter()
            .all(|t| t["DesiredState"] == "Running" && t["Image"].as_str().is_some_and(|i| i.starts_with("busybox"))),
        "{ps:?}"
    );
    let mut names: Vec<&str> = ps.iter().filter_map(|t| t["Name"].as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["api.1", "api.2"], "Docker's slots count from 1");
    let ls = d.json_lines(&["service", "ls"]);
    assert!(ls.iter().any(|s| s["Name"] == "api" && s["Replicas"] == "2/2" && s["Mode"] == "replicated"), "{ls:?}");
    let pretty = d.ok(&["service", "inspect", "--pretty", "api"]);
    assert!(pretty.contains("api") && pretty.contains("busybox") && pretty.contains("db_password"), "{pretty}");

    // Swarm's rotation: a new secret at the same target, in place, no restart.
    d.ok_with(&["secret", "create", "db_password_v2", "-"], Some(b"hunter3"));
    let pids: Vec<u32> = workers.iter().map(|w| w.pid()).collect();
    let started = Instant::now();
    d.ok(&[
        "service",
        "update",
        "--detach",
        "--secret-rm",
        "db_password",
        "--secret-add",
        "source=db_password_v2,target=db",
        "api",
    ]);
    let returned = started.elapsed();
    eventually("the new value in both files", DEADLINE, || async {
        (holding(&workers, "api", "db", b"hunter3") == 2).then_some(())
    })
    .await
    .expect("rotated");
    println!(
        "rotation: update returned after {returned:?}, files replaced {:?} after it",
        started.elapsed() - returned
    );
    assert_eq!(workers.iter().map(|w| w.pid()).collect::<Vec<_>>(), pids);

    // In use: refused with Docker's message; unused: removed.
    let e = d.fails(&["secret", "rm", "db_password_v2"], None);
    assert!(e.contains("secret 'db_password_v2' is in use by the following service: api"), "{e}");
    d.ok(&["secret", "rm", "db_password"]);
    assert!(d.json_lines(&["secret", "ls"]).iter().all(|s| s["Name"] != "db_password"));

    // Nodes: all five, one worker drained (its task leaves it), then the service goes.
    let nodes = d.json_lines(&["node", "ls"]);
    assert_eq!(nodes.len(), 5, "{nodes:?}");
    assert_eq!(nodes.iter().filter(|n| n["ManagerStatus"] == "Leader").count(), 1, "{nodes:?}");
    let w0 = coffer_node_hex(workers[0].id);
    d.ok(&["node", "update", "--availability", "drain", &w0]);
    assert_eq!(d.ok(&["node", "inspect", &w0, "--format", "{{.Spec.Availability}}"]).trim(), "drain");
    eventually("the drained worker's files to go", DEADLINE, || async {
        task_files(&workers[0], "api", "db").is_empty().then_some(())
    })
    .await
    .expect("drained");
    d.ok(&["service", "rm", "api"]);
    eventually("the files of the removed service to go", DEADLINE, || async {
        workers.iter().all(|w| task_files(w, "api", "db").is_empty()).then_some(())
    })
    .await
    .expect("removed");
    assert!(d.json_lines(&["service", "ls"]).is_empty());
    d.ok(&["secret", "rm", "db_password_v2"]);

    // The same changes as Docker events: replayed from a time, ended at another.
    let (since, until) = (started_at.to_string(), (unix_now() + 1).to_string());
    let events = d.json_lines(&["events", "--since", &since, "--until", &until, "--filter", "type=secret"]);
    let secret_events: Vec<(String, String)> = events
        .iter()
        .map(|e| (e["Action"].as_str().unwrap_or("").to_string(), e["Actor"]["ID"].as_str().unwrap_or("").to_string()))
        .collect();
    assert!(events.iter().all(|e| e["Type"] == "secret" && e["scope"] == "swarm"), "{events:?}");
    assert!(
        events.iter().any(|e| e["Action"] == "create" && e["Actor"]["Attributes"]["name"] == "db_password"),
        "{events:?}"
    );
    assert_eq!(secret_events.iter().filter(|(a, _)| a == "remove").count(), 2, "{secret_events:?}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn coffer_node_hex(id: u64) -> String {
    format!("{id:016x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_docker_input_gets_dockers_answer_and_changes_nothing() {
    let c = Cluster::start(bin(), 3, &[]).await.expect("cluster");
    let d = follower_env(&c, 1);
    let admin = c.admin(0);
    admin.create_secret("keep", b"KEEP", BTreeMap::new()).await.expect("secret");
    let web = coffer_api::services::ServiceCreate {
        name: "web".into(),
        replicas: Some(1),
        constraints: vec![],
        secrets: vec![],
        labels: BTreeMap::new(),
        run: Default::default(),
    };
    admin.create_service(&web).await.expect("service");

    let e = d.fails(&["secret", "ls", "--filter", "colour=red"], None);
    assert!(e.contains("invalid filter 'colour'"), "{e}");
    let big = vec![b'x'; 512 * 1024 + 1];
    let e = d.fails(&["secret", "create", "big", "-"], Some(&big));
    assert!(e.contains("secret data must be larger than 0 and less than"), "{e}");
    let e = d.fails(&["secret", "create", "bad name!", "-"], Some(b"x"));
    assert!(e.contains("invalid name, only 64 [a-zA-Z0-9-_.] characters allowed"), "{e}");
    let e = d.fails(&["secret", "create", "keep", "-"], Some(b"other"));
    assert!(e.contains("secret keep already exists"), "{e}");
    let e = d.fails(&["secret", "inspect", "nothing-here"], None);
    assert!(e.contains("secret nothing-here not found"), "{e}");
    let e = d.fails(&["container", "ls"], None);
    assert!(e.contains("is not served"), "{e}");

    // Raw requests for what the CLI never sends: malformed JSON, an update without version.
    let http = raw_client(&c);
    let base = format!("https://{}", c.managers[1].addr);
    let svc_before = admin.services().await.expect("services").len();
    for (method, path, body, status) in [
        ("POST", "/v1.41/secrets/create", "{not json", 400),
        ("POST", "/v1.41/services/create", r#"{"Name": 7}"#, 400),
        ("POST", "/v1.41/services/create", r#"{"Name":"g","Mode":{"Global":{}}}"#, 400),
        ("POST", "/v1.41/services/web/update", r#"{"Name":"web","Mode":{"Replicated":{"Replicas":5}}}"#, 400),
        (
            "POST",
            "/v1.41/services/web/update?version=99",
            r#"{"Name":"web","Mode":{"Replicated":{"Replicas":5}}}"#,
            409,
        ),
        ("GET", "/v1.99/secrets", "", 400),
        ("GET", "/v1.41/images/json", "", 501),
    ] {
        let req = http.request(method.parse().expect("method"), format!("{base}{path}"));
        let req = if body.is_empty() { req } else { req.header("content-type", "application/json").body(body) };
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let v: serde_json::Value = resp.json().await.expect("json error body");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {path}: {v}");
        assert!(v.get("error").is_none(), "{method} {path}: the native envelope: {v}");
    }
    let ping = http.get(format!("{base}/_ping")).send().await.expect("ping");
    assert_eq!(ping.headers().get("api-version").and_then(|v| v.to_str().ok()), Some("1.41"));
    let services = admin.services().await.expect("services");
    assert_eq!(services.len(), svc_before);
    assert_eq!((services[0].name.as_str(), services[0].replicas, services[0].spec_version), ("web", 1, 1));
    let secrets = admin.secrets().await.expect("secrets");
    assert_eq!(secrets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["keep"]);
    // Tooling that sends headers: a read-only API token lists, and may not write.
    let token =
        admin.create_api_token("docker-ro", coffer_api::tokens::TokenScope::ReadOnly).await.expect("token").token;
    // Tokens are checked on the answering manager's state: the follower applies it soon.
    let names: Vec<serde_json::Value> = eventually("the token to be known at the follower", DEADLINE, || async {
        let list = http.get(format!("{base}/v1.41/secrets")).bearer_auth(&token).send().await.ok()?;
        if list.status().as_u16() != 200 {
            return None;
        }
        list.json().await.ok()
    })
    .await
    .expect("listed with a token");
    assert_eq!(names.len(), 1, "{names:?}");
    let create = http
        .post(format!("{base}/v1.41/secrets/create"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"Name": "via-token", "Data": "eA=="}))
        .send()
        .await
        .expect("create");
    assert_eq!(create.status().as_u16(), 403);
    let v: serde_json::Value = create.json().await.expect("json");
    assert!(v["message"].as_str().is_some_and(|m| m.contains("read-only")), "{v}");
    assert_eq!(admin.secrets().await.expect("secrets").len(), 1, "a read-only token wrote");
    // A request without any credential is refused, in Docker's shape.
    let anon = coffer_api::tls::http_client(
        coffer_api::tls::client_config(&std::fs::read_to_string(c.client_dir().join("ca.pem")).expect("ca"), None)
            .expect("tls"),
    )
    .expect("client");
    let resp = anon.get(format!("{base}/v1.41/secrets")).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert!(v["message"].is_string(), "{v}");
}

/// A raw HTTPS client with the admin bundle.
fn raw_client(c: &Cluster) -> reqwest::Client {
    let dir = c.client_dir();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("bundle");
    let key = coffer_api::tls::certified_key(&read("client.pem"), &read("client.key")).expect("key");
    let cfg = coffer_api::tls::client_config(&read("ca.pem"), Some(std::sync::Arc::new(Static(key)))).expect("tls");
    coffer_api::tls::http_client(cfg).expect("client")
}

#[derive(Debug)]
struct Static(std::sync::Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Static {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}
