//! The cluster harness: real `coffer` manager processes on 127.0.0.1 with port 0, in
//! temporary data dirs, talking mutual TLS; and waiting for conditions with deadlines.
//!
//! Processes (not tasks) so that a test can SIGKILL or SIGSTOP a manager the way an
//! operator's machine would fail. Each manager's stderr goes to `<dir>.log` for post-mortems.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coffer_api::client::Client as AdminClient;

/// Generous, for a busy two-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `f` returns `Some`, polling, or fails after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lines a child prints on stdout, read on a thread of their own (so the child never
/// blocks on a full pipe).
fn stdout_lines(child: &mut Child) -> anyhow::Result<mpsc::Receiver<String>> {
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Tokens a `manager init` printed.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub worker: String,
    pub manager: String,
    /// The unlock key `manager init --autolock` printed.
    pub unlock_key: Option<String>,
}

pub mod chaos;

/// Where a node process runs: on this host's loopback, or on a host of a fault run's
/// network (its own namespace and address).
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub host: Option<chaos::net::Host>,
}

impl Launch {
    fn command(&self, bin: &Path) -> Command {
        match &self.host {
            Some(h) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &h.netns]).arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }

    /// The address to listen on, port 0.
    fn listen(&self) -> String {
        match &self.host {
            Some(h) => format!("{}:0", h.ip),
            None => "127.0.0.1:0".to_string(),
        }
    }
}

/// One manager process.
#[derive(Debug)]
pub struct ManagerProc {
    child: Child,
    pub dir: PathBuf,
    pub addr: String,
    pub id: u64,
    lines: mpsc::Receiver<String>,
}

impl ManagerProc {
    /// Spawns `coffer ARGS --format=json` and waits for its `serving` event; returns the
    /// events printed before it.
    fn spawn(bin: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<(Self, Vec<serde_json::Value>)> {
        Self::spawn_until(&Launch::default(), bin, dir, args, "serving")
    }

    /// `coffer manager run EXTRA` on a data dir under autolock: returns once the manager
    /// says it is locked (its `addr` is where to unlock it; `id` is not known yet: 0).
    pub fn restart_locked(bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let d = dir.to_str().context("utf-8 path")?;
        let mut args = vec!["manager", "run", "--data-dir", d];
        args.extend_from_slice(extra);
        Self::spawn_until(&Launch::default(), bin, dir, &args, "locked").map(|(p, _)| p)
    }

    /// Waits for the `serving` event of a manager that was locked; sets its id.
    pub fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).with_context(|| format!("{} never served", self.dir.display()))?;
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["event"] == "serving" {
                self.id = event["node_id"].as_u64().context("serving event without node_id")?;
                return Ok(());
            }
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn spawn_until(
        launch: &Launch,
        bin: &Path,
        dir: &Path,
        args: &[&str],
        until: &str,
    ) -> anyhow::Result<(Self, Vec<serde_json::Value>)> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .context("open the log file")?;
        let mut child = launch
            .command(bin)
            .args(args)
            .arg("--format=json")
            .env("COFFER_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let rx = stdout_lines(&mut child)?;
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    if event["event"] == until {
                        let addr = event["addr"].as_str().context("event without addr")?.to_string();
                        let id = event["node_id"].as_u64().unwrap_or(0);
                        let p = Self { child, dir: dir.to_path_buf(), addr, id, lines: rx };
                        return Ok((p, seen));
                    }
                    seen.push(event);
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                    bail!("manager in {} did not start; printed {seen:?}; log:\n{log}", dir.display());
                }
            }
        }
    }

    /// `coffer manager init` on 127.0.0.1:0.
    pub fn init(bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<(Self, Tokens)> {
        Self::init_on(&Launch::default(), bin, dir, extra)
    }

    /// `coffer manager init` where `launch` says.
    pub fn init_on(launch: &Launch, bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<(Self, Tokens)> {
        let d = dir.to_str().context("utf-8 path")?;
        let host = host_of(dir)?;
        let listen = launch.listen();
        let mut args = vec!["manager", "init", "--data-dir", d, "--listen", &listen, "--hostname", &host];
        args.extend_from_slice(extra);
        let (p, events) = Self::spawn_until(launch, bin, dir, &args, "serving")?;
        let init = events.iter().find(|e| e["event"] == "initialized").context("no initialized event")?;
        let token = |key: &str| init[key].as_str().map(str::to_string).with_context(|| format!("no {key}"));
        let unlock_key = init["unlock_key"].as_str().map(str::to_string);
        let tokens = Tokens { worker: token("worker_token")?, manager: token("manager_token")?, unlock_key };
        Ok((p, tokens))
    }

    /// `coffer manager join` on 127.0.0.1:0.
    pub fn join(bin: &Path, dir: &Path, token: &str, join: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::join_on(&Launch::default(), bin, dir, token, join, extra)
    }

    /// `coffer manager join` where `launch` says.
    pub fn join_on(
        launch: &Launch,
        bin: &Path,
        dir: &Path,
        token: &str,
        join: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let d = dir.to_str().context("utf-8 path")?;
        let host = host_of(dir)?;
        let listen = launch.listen();
        let mut args = vec![
            "manager",
            "join",
            "--data-dir",
            d,
            "--listen",
            &listen,
            "--token",
            token,
            "--join",
            join,
            "--hostname",
            &host,
        ];
        args.extend_from_slice(extra);
        Self::spawn_until(launch, bin, dir, &args, "serving").map(|(p, _)| p)
    }

    /// `coffer snapshot restore FILE` into the new data dir `dir`, on 127.0.0.1:0; returns the
    /// manager and the new join tokens it printed.
    pub fn restore(bin: &Path, dir: &Path, backup: &Path, key_file: &Path) -> anyhow::Result<(Self, Tokens)> {
        let d = dir.to_str().context("utf-8 path")?;
        let host = host_of(dir)?;
        let (b, k) = (backup.to_str().context("utf-8 path")?, key_file.to_str().context("utf-8 path")?);
        let args = [
            "snapshot",
            "restore",
            b,
            "--key-file",
            k,
            "--data-dir",
            d,
            "--listen",
            "127.0.0.1:0",
            "--hostname",
            &host,
        ];
        let (p, events) = Self::spawn(bin, dir, &args)?;
        let done = events.iter().find(|e| e["event"] == "restored").context("no restored event")?;
        let token = |key: &str| done[key].as_str().map(str::to_string).with_context(|| format!("no {key}"));
        let unlock_key = done["unlock_key"].as_str().map(str::to_string);
        let tokens = Tokens { worker: token("worker_token")?, manager: token("manager_token")?, unlock_key };
        Ok((p, tokens))
    }

    /// `coffer manager run`: restart from the data dir.
    pub fn restart(bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::restart_on(&Launch::default(), bin, dir, extra)
    }

    /// `coffer manager run` where `launch` says.
    pub fn restart_on(launch: &Launch, bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let d = dir.to_str().context("utf-8 path")?;
        let mut args = vec!["manager", "run", "--data-dir", d];
        args.extend_from_slice(extra);
        Self::spawn_until(launch, bin, dir, &args, "serving").map(|(p, _)| p)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("manager {} did not stop on SIGTERM", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The manager's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    /// Lines printed on stdout since start-up.
    pub fn drain_stdout(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

/// A hostname for the node in `dir`: hostnames are unique among live nodes, and every
/// node of a test runs on this one machine.
fn host_of(dir: &Path) -> anyhow::Result<String> {
    let name = dir.file_name().and_then(|n| n.to_str()).context("data dir name")?;
    Ok(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect())
}

/// Runs `coffer ARGS` to its end (a CLI command, or a node that must refuse to start),
/// with the admin bundle of `client_dir` and manager `addr`.
pub fn coffer(bin: &Path, args: &[&str], addr: &str, client_dir: &Path) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .env("COFFER_ADDR", addr)
        .env("COFFER_CLIENT_DIR", client_dir)
        .env("COFFER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run coffer")
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Sends `sig` to `pid` with kill(1): the workspace forbids `unsafe`, so no libc::kill.
pub fn send_signal(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for ManagerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A service of `replicas` tasks, each given `secret` as its file `value` (the benchmarks'
/// shape).
pub fn service_of(
    name: &str,
    replicas: u32,
    secret: &str,
    constraints: Vec<String>,
) -> coffer_api::services::ServiceCreate {
    coffer_api::services::ServiceCreate {
        name: name.into(),
        replicas: Some(replicas),
        constraints,
        secrets: vec![coffer_api::services::SecretRefSpec {
            source: secret.into(),
            target: Some("value".into()),
            uid: None,
            gid: None,
            mode: None,
            version: None,
        }],
        labels: Default::default(),
        run: Default::default(),
    }
}

/// A cluster of manager processes under one temporary directory.
#[derive(Debug)]
pub struct Cluster {
    pub bin: PathBuf,
    pub root: tempfile::TempDir,
    pub managers: Vec<ManagerProc>,
    pub tokens: Tokens,
    pub extra: Vec<String>,
}

impl Cluster {
    /// `init` plus `n - 1` joins; returns once all `n` managers vote.
    pub async fn start(bin: &Path, n: usize, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_init(bin, n, extra, extra).await
    }

    /// [`Self::start`], with arguments for `manager init` only (e.g. `--autolock`).
    pub async fn start_with_init(bin: &Path, n: usize, init: &[&str], extra: &[&str]) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new().prefix("coffer-it-").tempdir()?;
        let (first, tokens) = ManagerProc::init(bin, &root.path().join("m1"), init)?;
        let join = first.addr.clone();
        let mut c = Self {
            bin: bin.to_path_buf(),
            root,
            managers: vec![first],
            tokens,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 2..=n {
            let dir = c.root.path().join(format!("m{i}"));
            c.managers.push(ManagerProc::join(bin, &dir, &c.tokens.manager, &join, extra)?);
        }
        c.wait_voters(n).await?;
        Ok(c)
    }

    pub fn client_dir(&self) -> PathBuf {
        self.root.path().join("m1").join("client")
    }

    /// An admin client for manager `i` (0-based).
    pub fn admin(&self, i: usize) -> AdminClient {
        AdminClient::from_dir(&self.client_dir(), &self.managers[i].addr).expect("admin bundle")
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.managers.iter().position(|m| m.id == id)
    }

    /// Waits until manager 0 (or any live one) reports `n` voters and a leader.
    pub async fn wait_voters(&self, n: usize) -> anyhow::Result<u64> {
        let admin = self.admin(0);
        eventually("all managers to vote", DEADLINE, || async {
            let s = admin.status().await.ok()?;
            (s.members.iter().filter(|m| m.voter).count() == n && s.healthy).then_some(s.leader_id).flatten()
        })
        .await
    }

    /// The leader as manager `i` sees it, once one is known.
    pub async fn leader_seen_by(&self, i: usize) -> anyhow::Result<u64> {
        let admin = self.admin(i);
        eventually("a leader", DEADLINE, || async { admin.status().await.ok().and_then(|s| s.leader_id) }).await
    }

    pub fn extra_args(&self) -> Vec<&str> {
        self.extra.iter().map(String::as_str).collect()
    }
}

/// One worker process with its secrets dir on tmpfs (/dev/shm), removed on drop.
#[derive(Debug)]
pub struct WorkerProc {
    child: Child,
    pub dir: PathBuf,
    pub secrets: PathBuf,
    pub id: u64,
}

/// A fresh secrets dir on tmpfs for a test worker.
pub fn tmpfs_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Path::new("/dev/shm").join(format!("coffer-it-{}-{n}-{name}", std::process::id()))
}

impl WorkerProc {
    fn wait_running(mut child: Child, dir: &Path, secrets: &Path) -> anyhow::Result<Self> {
        let rx = stdout_lines(&mut child)?;
        loop {
            match rx.recv_timeout(DEADLINE) {
                Ok(line) => {
                    let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    if event["event"] == "running" {
                        let id = event["node_id"].as_u64().context("running event without node_id")?;
                        // Keep draining stdout so the worker never blocks on a full pipe.
                        std::thread::spawn(move || while rx.recv().is_ok() {});
                        return Ok(Self { child, dir: dir.to_path_buf(), secrets: secrets.to_path_buf(), id });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                    bail!("worker in {} did not start; log:\n{log}", dir.display());
                }
            }
        }
    }

    fn spawn(launch: &Launch, bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .context("open the log file")?;
        let mut cmd = launch.command(bin);
        cmd.args(args)
            .arg("--format=json")
            .env("COFFER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().with_context(|| format!("spawn {}", bin.display()))
    }

    /// `coffer worker join`, secrets on tmpfs.
    pub fn join(bin: &Path, dir: &Path, token: &str, join: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::join_on(&Launch::default(), bin, dir, token, join, extra)
    }

    /// `coffer worker join` where `launch` says, secrets on tmpfs.
    pub fn join_on(
        launch: &Launch,
        bin: &Path,
        dir: &Path,
        token: &str,
        join: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let secrets = tmpfs_dir("secrets");
        let d = dir.to_str().context("utf-8 path")?;
        let s = secrets.to_str().context("utf-8 path")?;
        let host = host_of(dir)?;
        let mut args = vec!["worker", "join", "--data-dir", d, "--join", join, "--secrets-dir", s, "--hostname", &host];
        args.extend_from_slice(extra);
        let child = Self::spawn(launch, bin, dir, &args, &[("COFFER_JOIN_TOKEN", token)])?;
        Self::wait_running(child, dir, &secrets)
    }

    /// `coffer worker run`: restart from the data dir.
    pub fn restart(bin: &Path, dir: &Path, secrets: &Path) -> anyhow::Result<Self> {
        Self::restart_with(bin, dir, secrets, &[])
    }

    /// `coffer worker run EXTRA` (e.g. `--join H:P` after a restore).
    pub fn restart_with(bin: &Path, dir: &Path, secrets: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let d = dir.to_str().context("utf-8 path")?;
        let mut args = vec!["worker", "run", "--data-dir", d];
        args.extend_from_slice(extra);
        let child = Self::spawn(&Launch::default(), bin, dir, &args, &[])?;
        Self::wait_running(child, dir, secrets)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (not restarted, not dead).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The content of `<secrets>/<task dir>/<target>`, if present.
    pub fn read(&self, task_dir: &str, target: &str) -> Option<Vec<u8>> {
        std::fs::read(self.secrets.join(task_dir).join(target)).ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

impl Cluster {
    /// Starts `n` workers joined to this cluster (rotating the worker token once).
    pub async fn start_workers(&self, n: usize, extra: &[&str]) -> anyhow::Result<Vec<WorkerProc>> {
        let token = self.admin(0).rotate_token(coffer_api::cluster::NodeRole::Worker).await?.token;
        let mut out = Vec::new();
        for i in 1..=n {
            let dir = self.root.path().join(format!("w{i}-{}", rand_suffix()));
            out.push(WorkerProc::join(&self.bin, &dir, &token, &self.managers[0].addr, extra)?);
        }
        Ok(out)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A worker made by hand for tests and benchmarks that drive the worker API directly:
/// its certificate, a client per manager, and a heartbeat loop keeping it ready.
#[derive(Debug)]
pub struct RawWorker {
    pub id: u64,
    pub clients: Vec<AdminClient>,
    beat: tokio::task::JoinHandle<()>,
}

impl Drop for RawWorker {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

/// Joins a [`RawWorker`] to `c` with the worker token `token`.
pub async fn raw_worker(c: &Cluster, token: &str) -> RawWorker {
    use coffer_api::cluster::{JoinRequest, JoinResponse, NodeRole};
    let ca = std::fs::read_to_string(c.client_dir().join("ca.pem")).expect("ca");
    let key = coffer_node::trust::pki::NodeKey::generate().expect("key");
    let req = JoinRequest {
        token: token.into(),
        role: NodeRole::Worker,
        csr_pem: key.csr_pem(&[]).expect("csr"),
        advertise_addr: "0.0.0.0:0".into(),
        hostname: format!("raw-{}", rand_suffix()),
    };
    let anon = AdminClient::with_tls(&ca, None, &c.managers[0].addr).expect("client");
    let joined: JoinResponse = anon.post("/v1/join", &req).await.expect("join");
    let cert = coffer_api::tls::certified_key(&joined.cert_pem, key.key_pem().expose()).expect("cert");
    let clients: Vec<AdminClient> = c
        .managers
        .iter()
        .map(|m| {
            let resolver = std::sync::Arc::new(coffer_api::tls::StaticCert(cert.clone()));
            AdminClient::with_tls(&ca, Some(resolver), &m.addr).expect("client")
        })
        .collect();
    let hb = clients.clone();
    let beat = tokio::spawn(async move {
        let mut i = 0usize;
        loop {
            let _ = hb[i % hb.len()].post::<_, serde_json::Value>("/v1/worker/heartbeat", &()).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    RawWorker { id: joined.node_id, clients, beat }
}
