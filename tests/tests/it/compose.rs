//! Coffer on a Docker engine: the image deploy/build-image.sh makes (FROM scratch, packaged
//! from this test build's binary: no release build, no registry) and deploy/compose.yaml's
//! cluster (three managers, two workers with tmpfs secrets, an app container), under a
//! project name, image tags and a network of their own so that runs in parallel never meet.
//! A secret reaches the app; the leader's container is SIGKILLed; a rotation through another
//! manager reaches the running app (the time it takes is printed); `down` and `up` keep
//! every secret. Skipped, saying so, only when no Docker engine answers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coffer_tests::{eventually, DEADLINE};

use crate::bin;

/// Image builds, container starts and joins on a busy two-core machine.
const SLOW: Duration = Duration::from_secs(180);

/// What the app container reads: worker-1 writes it for the service `app`'s first replica.
const APP_SECRET: &str = "/run/secrets/app.0/db_password";

/// The bound on rotation-to-visible after a leader kill (the target is 1 s; a busy machine
/// and `docker exec` round trips get slack).
const ROTATION_BOUND: Duration = Duration::from_secs(10);

/// How old a project of this test must be before a later run takes it for what a killed
/// run left behind (no `Drop` ran; its containers restart until removed): far more than a
/// run can take.
const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace dir").to_path_buf()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Runs `cmd` to its end, with `stdin` fed to it.
fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).expect("write stdin");
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("wait for {cmd:?}: {e}"))
}

fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args), None)
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?} failed: {}{}", text(&out.stderr), text(&out.stdout));
    text(&out.stdout)
}

/// One compose project: its name, images and network, torn down (volumes and images too)
/// when dropped, whatever happened.
#[derive(Debug)]
struct Project {
    name: String,
    image: String,
    toolbox: String,
    /// The first three octets of the project's /24 (COFFER_NET).
    net: String,
    /// Container ids by service, since the last `up` (docker-compose takes a second of CPU
    /// to answer `ps`: not something to poll).
    containers: Mutex<BTreeMap<String, String>>,
}

impl Project {
    /// Names of its own: `coffer-it-<start time>-<random>`, and images tagged alike.
    fn new() -> Self {
        Self::named(&format!("{}-{:08x}", now_secs(), rand::random::<u32>()))
    }

    fn named(id: &str) -> Self {
        Self {
            name: format!("coffer-it-{id}"),
            image: format!("coffer-it:{id}"),
            toolbox: format!("coffer-it-toolbox:{id}"),
            net: random_net(),
            containers: Mutex::default(),
        }
    }

    fn compose(&self, args: &[&str]) -> Output {
        let file = workspace().join("deploy/compose.yaml");
        let mut cmd = Command::new("docker-compose");
        cmd.arg("--project-name")
            .arg(&self.name)
            .arg("--file")
            .arg(file)
            .args(args)
            .env("COFFER_IMAGE", &self.image)
            .env("COFFER_TOOLBOX_IMAGE", &self.toolbox)
            .env("COFFER_NET", &self.net);
        match cmd.stdin(Stdio::null()).output() {
            Ok(out) => out,
            Err(e) => panic!("docker-compose {args:?}: {e} (scripts/setup.sh installs Debian's docker-compose)"),
        }
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(out.status.success(), "docker-compose {args:?} failed: {}{}", text(&out.stderr), text(&out.stdout));
        text(&out.stdout)
    }

    /// `up -d`; another /24 when this one overlaps a network of someone else's.
    fn up(&mut self) {
        self.containers.lock().expect("containers").clear();
        for _ in 0..10 {
            let out = self.compose(&["up", "--detach", "--no-color"]);
            if out.status.success() {
                return;
            }
            let err = text(&out.stderr);
            if !err.contains("overlaps") {
                panic!("docker-compose up failed: {err}");
            }
            self.net = random_net();
        }
        panic!("no free /24 for the compose network after 10 tries");
    }

    /// The id of the service's container.
    fn container(&self, service: &str) -> String {
        let mut known = self.containers.lock().expect("containers");
        if let Some(id) = known.get(service) {
            return id.clone();
        }
        let id = self.compose_ok(&["ps", "--quiet", service]).trim().to_string();
        assert!(!id.is_empty(), "no container for {service}");
        known.insert(service.to_string(), id.clone());
        id
    }

    /// `docker exec` into the service's container.
    fn exec(&self, service: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let id = self.container(service);
        let mut cmd = Command::new("docker");
        cmd.arg("exec");
        if stdin.is_some() {
            cmd.arg("--interactive");
        }
        run(cmd.arg(&id).args(args), stdin)
    }

    /// `coffer ARGS` inside a manager's container, as the admin (the compose file points
    /// COFFER_ADDR at the manager and COFFER_CLIENT_DIR at the admin bundle); must succeed.
    fn coffer_ok(&self, manager: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
        let mut full = vec!["coffer"];
        full.extend_from_slice(args);
        let out = self.exec(manager, &full, stdin);
        assert!(
            out.status.success(),
            "coffer {args:?} on {manager} failed: {}{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        text(&out.stdout)
    }

    fn health(&self, container: &str) -> String {
        let out = docker(&["inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", container]);
        text(&out.stdout).trim().to_string()
    }

    /// Every manager's health check passes: each sees a leader and has applied what it
    /// knows committed (/readyz's condition).
    async fn wait_ready(&self) {
        let managers: Vec<String> = MANAGERS.iter().map(|m| self.container(m)).collect();
        eventually("every manager's container healthy", SLOW, || async {
            managers.iter().all(|c| self.health(c) == "healthy").then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", self.logs()));
    }

    /// What the app container reads now, if anything.
    fn app_reads(&self) -> Option<Vec<u8>> {
        let out = self.exec("app", &["cat", APP_SECRET], None);
        out.status.success().then_some(out.stdout)
    }

    /// The manager service whose address is `addr`.
    fn manager_at(&self, addr: &str) -> &'static str {
        MANAGERS
            .iter()
            .enumerate()
            .find(|(i, _)| addr == format!("{}.{}:7370", self.net, 11 + i))
            .map(|(_, m)| *m)
            .unwrap_or_else(|| panic!("no manager service at {addr}"))
    }

    fn logs(&self) -> String {
        let out = self.compose(&["logs", "--no-color", "--tail", "40"]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("compose project {} at failure:\n{}", self.name, self.logs());
        }
        let down = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
        if !down.status.success() {
            eprintln!("docker-compose down -v: {}", text(&down.stderr));
        }
        let _ = docker(&["rmi", "--force", &self.image, &self.toolbox]);
    }
}

const MANAGERS: [&str; 3] = ["manager-1", "manager-2", "manager-3"];

/// A /24 of 10.200.0.0-10.249.255.0: clear of Docker's default pools and of the fault
/// harness's bridges (10.100-199).
fn random_net() -> String {
    let (a, b) = (200 + rand::random::<u8>() % 50, rand::random::<u8>());
    format!("10.{a}.{b}")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether `id` (`<start time>-<random>`) names a project or image of a run long gone.
fn stale(id: &str) -> bool {
    let started: Option<u64> = id.split('-').next().and_then(|t| t.parse().ok());
    started.is_some_and(|t| now_secs().saturating_sub(t) > STALE_AFTER.as_secs())
}

/// Removes the projects (containers, volumes, network) and images that killed runs of this
/// test left behind.
fn reap_stale() {
    let label = "{{.Label \"com.docker.compose.project\"}}";
    let mut ids = BTreeSet::new();
    for args in [
        &["ps", "--all", "--format", label][..],
        &["volume", "ls", "--format", label],
        &["network", "ls", "--format", label],
    ] {
        for project in text(&docker(args).stdout).lines() {
            ids.extend(project.trim().strip_prefix("coffer-it-").filter(|id| stale(id)).map(str::to_string));
        }
    }
    for repo in ["coffer-it", "coffer-it-toolbox"] {
        for tag in text(&docker(&["images", "--format", "{{.Tag}}", repo]).stdout).lines() {
            ids.extend(Some(tag.trim()).filter(|id| stale(id)).map(str::to_string));
        }
    }
    for id in ids {
        eprintln!("removing coffer-it-{id}, left behind by a run that was killed");
        drop(Project::named(&id));
    }
}

/// The leader's address, as manager `via` sees it.
fn leader_addr(p: &Project, via: &str) -> Option<String> {
    let out = p.exec(via, &["coffer", "cluster", "status", "--format", "json"], None);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let leader = status["leader_id"].as_u64()?;
    let members = status["members"].as_array()?;
    let member = members.iter().find(|m| m["id"].as_u64() == Some(leader))?;
    member["addr"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_rotates_into_a_running_app_after_a_leader_kill_and_keeps_state_across_down_and_up() {
    match Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!("SKIPPED: no Docker engine reachable (`docker info` failed: {})", text(&out.stderr).trim());
            return;
        }
        Err(e) => {
            println!("SKIPPED: no Docker engine reachable (cannot run `docker info`: {e})");
            return;
        }
    }
    reap_stale();
    let mut p = Project::new();
    let started = Instant::now();

    // The image, from the binary this test build already has.
    let script = workspace().join("deploy/build-image.sh");
    let built = run(
        Command::new(&script)
            .env("COFFER_BINARY", bin())
            .env("COFFER_IMAGE", &p.image)
            .env("COFFER_TOOLBOX_IMAGE", &p.toolbox),
        None,
    );
    assert!(built.status.success(), "build-image.sh failed: {}{}", text(&built.stderr), text(&built.stdout));
    let help = docker_ok(&["run", "--rm", &p.image, "--help"]);
    assert!(help.contains("Raft-replicated secret store"), "coffer --help in the image: {help}");
    let shell = docker(&["run", "--rm", "--entrypoint", "/bin/sh", &p.image, "-c", "true"]);
    assert!(!shell.status.success(), "the coffer image has a shell");
    println!("images built in {:.1} s", started.elapsed().as_secs_f64());

    p.up();
    p.wait_ready().await;
    println!("cluster up and ready in {:.1} s (network {}.0/24)", started.elapsed().as_secs_f64(), p.net);

    // Secrets and a service whose replica worker-1 holds for the app, as uid 1000.
    let value = format!("hunter2-{:016x}", rand::random::<u64>());
    p.coffer_ok("manager-1", &["secret", "create", "db_password", "-"], Some(value.as_bytes()));
    for name in ["api_key", "tls_key"] {
        p.coffer_ok("manager-1", &["secret", "create", name, "-", "--label", "from=compose"], Some(b"unused"));
    }
    p.coffer_ok(
        "manager-1",
        &[
            "service",
            "create",
            "app",
            "--constraint",
            "node.hostname==worker-1",
            "--secret",
            "source=db_password,target=db_password,uid=1000,gid=1000,mode=0400",
        ],
        None,
    );
    eventually("the app container reads the secret", SLOW, || async {
        (p.app_reads().as_deref() == Some(value.as_bytes())).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", p.logs()));
    let app = p.container("app");
    let app_started = docker_ok(&["inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}", &app]);

    // SIGKILL the leader's container; rotate through another manager.
    let leader_addr = eventually("a leader", DEADLINE, || async { leader_addr(&p, "manager-1") })
        .await
        .expect("a leader known to manager-1");
    let leader = p.manager_at(&leader_addr);
    let other = MANAGERS.iter().copied().find(|m| *m != leader).expect("another manager");
    docker_ok(&["kill", "--signal", "KILL", &p.container(leader)]);
    let rotated = format!("rotated-{:016x}", rand::random::<u64>());
    let killed = Instant::now();
    eventually("a rotation through a surviving manager", DEADLINE, || async {
        let out = p.exec(other, &["coffer", "secret", "rotate", "db_password", "-"], Some(rotated.as_bytes()));
        out.status.success().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", p.logs()));
    let returned = Instant::now();
    let mut polls = 0u32;
    eventually("the rotated value in the running app", SLOW, || {
        polls += 1;
        let visible = p.app_reads().as_deref() == Some(rotated.as_bytes());
        async move { visible.then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", p.logs()));
    let visible = returned.elapsed();
    let per_poll = visible / polls.max(1);
    println!(
        "rotate-to-visible after SIGKILL of the leader ({leader}): {:.3} s from `coffer secret rotate` returning \
         through {other} to the new value in the app container ({polls} `docker exec cat` poll(s) of {:.0} ms \
         on average; the rotation itself returned {:.3} s after the kill)",
        visible.as_secs_f64(),
        per_poll.as_secs_f64() * 1000.0,
        (returned - killed).as_secs_f64()
    );
    assert!(visible < ROTATION_BOUND, "the rotated value took {visible:?} to reach the app");
    assert_eq!(p.container("app"), app, "the app container was replaced");
    let app_now = docker_ok(&["inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}", &app]);
    assert_eq!(app_now, app_started, "the app container was restarted");

    // `down` (volumes kept) and `up`: the same cluster, every secret, the rotated value.
    p.compose_ok(&["down", "--timeout", "10"]);
    let again = Instant::now();
    p.up();
    p.wait_ready().await;
    println!("down and up: ready again in {:.1} s", again.elapsed().as_secs_f64());
    let names = p.coffer_ok("manager-2", &["secret", "ls", "--quiet"], None);
    let mut names: Vec<&str> = names.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    names.sort_unstable();
    assert_eq!(names, ["api_key", "db_password", "tls_key"], "secrets after down and up");
    eventually("the rotated value in the new app container", SLOW, || async {
        (p.app_reads().as_deref() == Some(rotated.as_bytes())).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", p.logs()));
    println!("compose test done in {:.1} s", started.elapsed().as_secs_f64());
}
