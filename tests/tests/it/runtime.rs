//! The worker's container runtime (`--runtime docker`) on the local Docker engine: a
//! service with an image runs one container per task with its secrets mounted read-only;
//! a rotation shows inside the running container with no restart; scaling down removes
//! containers; a killed container is started again; a restarted worker adopts its
//! containers; and bad input (a missing image, no engine, no image) fails clearly and
//! disturbs nothing else.
//!
//! The image is made here with `docker import` from Debian's `busybox-static` (no
//! registry is reachable); `.ci/run` installs the package.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use coffer_api::services::{RunSpec, ServiceCreate, ServiceUpdate};
use coffer_api::worker::TaskRunState;
use coffer_tests::{coffer, eventually, service_of, tmpfs_dir, Cluster, WorkerProc, DEADLINE};

use crate::bin;

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).stdin(Stdio::null()).output().expect("run docker")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A busybox image made from the local `busybox-static` package, removed on drop with every
/// container the test's workers made.
struct Engine {
    image: String,
    workers: Vec<u64>,
}

impl Engine {
    fn new() -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let image = format!("coffer-it-busybox:{}-{nanos}", std::process::id());
        let root = tempfile::tempdir().expect("tempdir");
        let rootfs = root.path().join("rootfs");
        let bin_dir = rootfs.join("bin");
        std::fs::create_dir_all(&bin_dir).expect("mkdir");
        std::fs::create_dir_all(rootfs.join("tmp")).expect("mkdir");
        std::fs::copy("/bin/busybox", bin_dir.join("busybox")).expect("busybox-static is installed (/bin/busybox)");
        for tool in ["sh", "sleep", "cat", "echo", "true", "ls"] {
            std::os::unix::fs::symlink("busybox", bin_dir.join(tool)).expect("symlink");
        }
        let tarball = root.path().join("rootfs.tar");
        let tarball = tarball.to_str().expect("utf-8");
        let tar = Command::new("tar")
            .args(["-C", rootfs.to_str().expect("utf-8"), "-cf", tarball, "."])
            .status()
            .expect("tar");
        assert!(tar.success(), "tar the rootfs");
        docker_ok(&["import", tarball, &image]);
        Self { image, workers: Vec::new() }
    }

    /// Containers of worker `id` (its `coffer.worker` label), as (id, state, service).
    fn containers(&self, worker: u64) -> Vec<(String, String, String)> {
        let filter = format!("label=coffer.worker={worker:016x}");
        let out = docker_ok(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &filter,
            "--format",
            "{{.ID}} {{.State}} {{.Label \"coffer.service\"}}",
        ]);
        out.lines()
            .filter_map(|l| {
                let mut p = l.split_whitespace();
                Some((p.next()?.to_string(), p.next()?.to_string(), p.next().unwrap_or_default().to_string()))
            })
            .collect()
    }

    fn running_of(&self, worker: u64, service: &str) -> Vec<String> {
        self.containers(worker)
            .into_iter()
            .filter(|(_, s, svc)| s == "running" && svc == service)
            .map(|c| c.0)
            .collect()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for w in &self.workers {
            let ids: Vec<String> = self.containers(*w).into_iter().map(|c| c.0).collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = docker(&args);
            }
        }
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

fn engine_reachable() -> bool {
    docker(&["info", "--format", "{{.ServerVersion}}"]).status.success()
}

/// The test image and a one-manager cluster; `None` (the test is skipped, and says so)
/// where no engine answers.
async fn engine_and_cluster() -> Option<(Engine, Cluster)> {
    if !engine_reachable() {
        eprintln!("SKIPPED: no Docker engine answers on this machine (docker info failed)");
        return None;
    }
    let engine = Engine::new();
    Some((engine, Cluster::start(bin(), 1, &[]).await.expect("cluster")))
}

/// The harness's service, its secret `db_password` mounted as `db` with mode 0400.
fn service(name: &str, replicas: u32, run: RunSpec) -> ServiceCreate {
    let mut s = service_of(name, replicas, "db_password", vec![]);
    s.secrets[0].target = Some("db".into());
    s.secrets[0].mode = Some(0o400);
    ServiceCreate { run, ..s }
}

/// A container that runs until it is told to stop, and stops at once on SIGTERM.
fn app(image: &str) -> RunSpec {
    RunSpec {
        image: Some(image.into()),
        args: vec![
            "sh".into(),
            "-c".into(),
            "trap 'echo hup >> /tmp/hups' HUP; trap 'exit 0' TERM; while true; do sleep 1; done".into(),
        ],
        env: vec!["APP_MODE=test".into()],
        ..Default::default()
    }
}

fn cat_in(container: &str, path: &str) -> Option<String> {
    let out = docker(&["exec", container, "cat", path]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn started_at(container: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", container])
}

async fn states(c: &Cluster, service: &str) -> Vec<TaskRunState> {
    c.admin(0).service_tasks(service).await.map(|ts| ts.into_iter().map(|t| t.status).collect()).unwrap_or_default()
}

/// The docker CLI pointed at manager 0 of `c` with `coffer client docker-env`'s variables,
/// and the config dir it uses (kept while the command is).
fn docker_cli(c: &Cluster) -> (Command, tempfile::TempDir) {
    let env_out = coffer(bin(), &["client", "docker-env"], &c.managers[0].addr, &c.client_dir());
    let docker_env: Vec<(String, String)> = String::from_utf8_lossy(&env_out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    let config = tempfile::tempdir().expect("docker config");
    let mut cli = Command::new("docker");
    cli.env("DOCKER_CONFIG", config.path())
        .envs(docker_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null());
    (cli, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_worker_runs_tasks_in_containers_that_see_rotations_without_restarting() {
    let Some((mut engine, c)) = engine_and_cluster().await else { return };
    let mut workers = c.start_workers(1, &["--runtime", "docker"]).await.expect("worker");
    engine.workers.push(workers[0].id);
    let w = workers[0].id;
    let admin = c.admin(0);
    admin.create_secret("db_password", b"v1-hunter2", BTreeMap::new()).await.expect("secret");
    // Through the CLI: what runs, its environment, the signal on a change, its command.
    let script = app(&engine.image).args;
    let mut args = vec!["service", "create", "app", "--replicas", "2", "--image", &engine.image];
    args.extend(["--env", "APP_MODE=test", "--on-secret-change", "signal=SIGHUP"]);
    args.extend(["--secret", "source=db_password,target=db,mode=0400", "--"]);
    args.extend(script.iter().map(String::as_str));
    let created = coffer(bin(), &args, &c.managers[0].addr, &c.client_dir());
    assert!(created.status.success(), "service create: {}", String::from_utf8_lossy(&created.stderr));
    let run = admin.service("app").await.expect("inspect").run.expect("what it runs");
    assert_eq!((run.secrets_mount.as_str(), run.on_secret_change.as_str()), ("/run/secrets", "signal=SIGHUP"));
    assert_eq!(run.args, script);

    let running = eventually("two running containers", DEADLINE, || async {
        let r = engine.running_of(w, "app");
        (r.len() == 2).then_some(r)
    })
    .await
    .expect("containers");
    for cid in &running {
        let value =
            eventually("the secret inside the container", DEADLINE, || async { cat_in(cid, "/run/secrets/db") })
                .await
                .expect("value");
        assert_eq!(value, "v1-hunter2");
        let env = docker_ok(&["exec", cid, "sh", "-c", "echo $APP_MODE"]);
        assert_eq!(env, "test", "the service's environment");
        // Read-only: the container cannot change what the worker wrote.
        assert!(!docker(&["exec", cid, "sh", "-c", "echo x > /run/secrets/db"]).status.success());
    }
    eventually("both tasks reported running", DEADLINE, || async {
        let s = states(&c, "app").await;
        (s.len() == 2 && s.iter().all(|s| *s == TaskRunState::Running)).then_some(())
    })
    .await
    .expect("running");
    let ps = coffer(bin(), &["service", "ps", "app"], &c.managers[0].addr, &c.client_dir());
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert_eq!(ps.lines().filter(|l| l.ends_with(" running")).count(), 2, "service ps shows both running:\n{ps}");

    // A rotation replaces the file inside the running containers: same containers, same start.
    let starts: Vec<String> = running.iter().map(|c| started_at(c)).collect();
    let t0 = Instant::now();
    admin.rotate_secret("db_password", b"v2-rotated").await.expect("rotate");
    let returned = t0.elapsed();
    for cid in &running {
        eventually("the rotated value inside the container", DEADLINE, || async {
            (cat_in(cid, "/run/secrets/db").as_deref() == Some("v2-rotated")).then_some(())
        })
        .await
        .expect("rotated");
    }
    let seen = t0.elapsed();
    for cid in &running {
        eventually("the container got its SIGHUP", DEADLINE, || async {
            (cat_in(cid, "/tmp/hups").is_some_and(|h| h.contains("hup"))).then_some(())
        })
        .await
        .expect("signalled");
    }
    println!(
        "rotation: the call returned in {returned:?}; both containers read the new value {:?} after it",
        seen - returned
    );
    assert_eq!(engine.running_of(w, "app").len(), 2);
    assert_eq!(running.iter().map(|c| started_at(c)).collect::<Vec<_>>(), starts, "a container was restarted");

    // A killed container is started again (after its backoff), as the same container.
    let victim = running[0].clone();
    docker_ok(&["kill", &victim]);
    eventually("the killed container running again", DEADLINE, || async {
        let again = started_at(&victim) != starts[0] && engine.running_of(w, "app").contains(&victim);
        again.then_some(())
    })
    .await
    .expect("restarted");
    assert_eq!(cat_in(&victim, "/run/secrets/db").as_deref(), Some("v2-rotated"));

    // Scaling down removes a container.
    let update = ServiceUpdate { replicas: Some(1), ..Default::default() };
    admin.update_service("app", &update).await.expect("scale down");
    let left = eventually("one container left", DEADLINE, || async {
        let all: Vec<_> = engine.containers(w).into_iter().filter(|c| c.2 == "app").collect();
        (all.len() == 1 && all[0].1 == "running").then(|| all[0].0.clone())
    })
    .await
    .expect("scaled down");

    // A restarted worker adopts its running container instead of starting another.
    let (dir, secrets) = (workers[0].dir.clone(), workers[0].secrets.clone());
    let before = started_at(&left);
    workers[0].kill();
    let old = std::mem::replace(&mut workers[0], WorkerProc::restart(bin(), &dir, &secrets).expect("restart"));
    // Not dropped: dropping a test worker removes its secrets dir, which a real restart
    // keeps (and a container whose mounted directory was made again is rightly replaced).
    std::mem::forget(old);
    eventually("the restarted worker adopted its container", DEADLINE, || async {
        workers[0].log().contains("adopted a running container").then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; worker log:\n{}", workers[0].log()));
    let all: Vec<_> = engine.containers(w).into_iter().filter(|c| c.2 == "app").collect();
    assert_eq!(all.len(), 1, "no second container: {all:?}");
    assert_eq!((all[0].0.as_str(), all[0].1.as_str()), (left.as_str(), "running"));
    assert_eq!(started_at(&left), before, "the adopted container was not restarted");

    // The docker CLI's `service create` (the Docker-compatible API) runs the same way.
    let (mut cli, _config) = docker_cli(&c);
    cli.args(["service", "create", "-d", "--name", "dsvc", "--secret", "db_password", &engine.image]).args([
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    let created = cli.output().expect("docker service create");
    assert!(created.status.success(), "docker service create: {}", String::from_utf8_lossy(&created.stderr));
    let dsvc = eventually("the docker CLI's service in a container", DEADLINE, || async {
        engine.running_of(w, "dsvc").first().cloned()
    })
    .await
    .expect("dsvc");
    let value =
        eventually("its secret at Docker's path", DEADLINE, || async { cat_in(&dsvc, "/run/secrets/db_password") })
            .await
            .expect("value");
    assert_eq!(value, "v2-rotated");
    admin.remove_service("dsvc").await.expect("rm dsvc");

    // Removing the service removes its container.
    admin.remove_service("app").await.expect("rm");
    eventually("no container left", DEADLINE, || async { engine.containers(w).is_empty().then_some(()) })
        .await
        .unwrap_or_else(|e| panic!("{e}; worker log:\n{}", workers[0].log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_runtime_input_fails_clearly_and_disturbs_nothing_else() {
    let Some((mut engine, c)) = engine_and_cluster().await else { return };

    // A worker that cannot reach the engine refuses to start, and says why.
    let token = c.admin(0).rotate_token(coffer_api::cluster::NodeRole::Worker).await.expect("token").token;
    let not_a_socket = c.root.path().join("not-a-socket");
    std::fs::write(&not_a_socket, b"").expect("file");
    for socket in [c.root.path().join("missing.sock"), not_a_socket] {
        let secrets = tmpfs_dir("nosock");
        let data = c.root.path().join(format!("nosock-{}", socket.file_name().expect("name").to_string_lossy()));
        let out = Command::new(bin())
            .args(["worker", "join", "--data-dir", data.to_str().expect("utf-8"), "--join", &c.managers[0].addr])
            .args(["--secrets-dir", secrets.to_str().expect("utf-8"), "--runtime", "docker"])
            .args(["--docker-socket", socket.to_str().expect("utf-8")])
            .env("COFFER_JOIN_TOKEN", &token)
            .env("COFFER_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let _ = std::fs::remove_dir_all(&secrets);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a worker without an engine started");
        assert!(err.contains("Docker engine") && err.contains("--docker-socket"), "unclear error: {err}");
        assert!(!Path::new(&data).join("worker.json").exists(), "it joined anyway");
    }

    // What a service runs is checked before anything is proposed.
    let admin = c.admin(0);
    admin.create_secret("db_password", b"v1", BTreeMap::new()).await.expect("secret");
    for (bad, why) in [
        (RunSpec { image: Some("bad image".into()), ..Default::default() }, "an image with a space"),
        (RunSpec { env: vec!["1A=x".into()], ..app("busybox") }, "an env key"),
        (RunSpec { secrets_mount: Some("/run/../etc".into()), ..app("busybox") }, "a mount with '..'"),
        (RunSpec { on_secret_change: Some("signal=SIGNOPE".into()), ..app("busybox") }, "a signal"),
        (RunSpec { env: vec!["A=1".into()], ..Default::default() }, "an environment without an image"),
    ] {
        let e = admin.create_service(&service("bad", 1, bad)).await.expect_err(why);
        assert_eq!(e.code(), Some(coffer_api::error::ErrorCode::InvalidArgument), "{why}: {e}");
    }
    let cli = coffer(
        bin(),
        &["service", "create", "bad", "--image", "x", "--on-secret-change", "reload"],
        &c.managers[0].addr,
        &c.client_dir(),
    );
    assert!(!cli.status.success() && String::from_utf8_lossy(&cli.stderr).contains("on-secret-change"));
    // Through the Docker API: what the workers would not apply is refused, not ignored.
    let (mut cli, _config) = docker_cli(&c);
    let out = cli.args(["service", "create", "-d", "--name", "bad", "--user", "nobody", "busybox"]).output();
    let err = String::from_utf8_lossy(&out.expect("docker").stderr).to_string();
    assert!(err.contains("ContainerSpec.User is not supported"), "docker service create --user: {err}");
    assert!(admin.services().await.expect("ls").is_empty(), "a refused service was created");

    let workers = c.start_workers(1, &["--runtime", "docker"]).await.expect("worker");
    let w = workers[0].id;
    engine.workers.push(w);
    let missing = format!("coffer-it-no-such-image:{}", std::process::id());
    admin.create_service(&service("ghost", 1, RunSpec { image: Some(missing.clone()), ..app("") })).await.expect("svc");
    admin.create_service(&service("good", 1, app(&engine.image))).await.expect("svc");
    admin.create_service(&service("files", 1, RunSpec::default())).await.expect("svc");

    let message = eventually("the missing image's task failed", DEADLINE, || async {
        match states(&c, "ghost").await.first() {
            Some(TaskRunState::Failed { message }) => Some(message.clone()),
            _ => None,
        }
    })
    .await
    .expect("failed");
    assert!(message.contains("No such image"), "the engine's message: {message}");
    eventually("the good service runs beside it", DEADLINE, || async {
        (engine.running_of(w, "good").len() == 1 && states(&c, "good").await == [TaskRunState::Running]).then_some(())
    })
    .await
    .expect("good");
    // A service without an image on a docker worker: files only, no container.
    eventually("the files-only task is ready", DEADLINE, || async {
        (states(&c, "files").await == [TaskRunState::Ready]).then_some(())
    })
    .await
    .expect("ready");
    assert!(workers[0].read(&format!("files.{}", 0), "db").is_some(), "the files-only task's secret");
    assert!(engine.containers(w).iter().all(|c| c.2 != "files"), "a container for a service without an image");
    // The missing image is tried again, with a backoff.
    eventually("a second attempt at the missing image", Duration::from_secs(60), || async {
        (workers[0].log().matches("container not started").count() >= 2).then_some(())
    })
    .await
    .expect("retried");
    assert!(engine.containers(w).iter().all(|c| c.2 != "ghost"), "a container for a missing image");
    let ps = coffer(bin(), &["service", "ps", "ghost"], &c.managers[0].addr, &c.client_dir());
    assert!(String::from_utf8_lossy(&ps.stdout).contains("failed: No such image"), "service ps shows the failure");
    // Docker's /tasks says the same, in Docker's words.
    let (mut cli, _config) = docker_cli(&c);
    let out = cli.args(["service", "ps", "--no-trunc", "--format", "{{.CurrentState}}|{{.Error}}", "ghost"]).output();
    let out = String::from_utf8_lossy(&out.expect("docker service ps").stdout).to_string();
    assert!(out.starts_with("Failed") && out.contains("No such image"), "docker service ps: {out}");
    let (mut cli, _config) = docker_cli(&c);
    let out = cli.args(["service", "ps", "--format", "{{.CurrentState}}", "good"]).output();
    let out = String::from_utf8_lossy(&out.expect("docker service ps").stdout).to_string();
    assert!(out.starts_with("Running"), "docker service ps: {out}");
}
