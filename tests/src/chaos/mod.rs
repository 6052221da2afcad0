//! The fault harness: a cluster of real `coffer` managers, each on a host of its own (a
//! network namespace, see [`net`]), concurrent clients recording every call, faults injected
//! on a schedule drawn from a seed, and at the end a linearizability check of each secret's
//! history and the invariants every run must keep. The clients create, rotate, inspect and
//! list secrets (the calls checked), and update the service and make and revoke API tokens
//! (load that must not break them).
//!
//! Faults: `kill -9` and restart (leader, follower, two at once), pause (SIGSTOP/SIGCONT;
//! leader, follower), isolate one manager (leader, follower), a partition that leaves the
//! leader in the minority, a one-way drop into the leader, a restart of every manager at
//! once, a worker cut off from every manager. Packet delay is not among them: the kernels we run on have no netem qdisc.

pub mod linearizable;
pub mod net;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coffer_api::client::Client;
use coffer_api::error::ErrorCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use self::linearizable::{Op, OrderedSecret, Secret, SecretAnswer, SecretCall};
use crate::{eventually, Launch, ManagerProc, WorkerProc, DEADLINE};

/// The plaintext in every value the workload writes: it must appear in no file.
pub const CANARY: &str = "CANARY-chaos-7e1d";

/// How much a run does.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: &'static str,
    pub managers: usize,
    pub workers: usize,
    /// Faults one after another (heal, settle, next).
    pub faults: usize,
    /// Then this long with overlapping faults.
    pub soak: Duration,
    pub clients: usize,
    pub secrets: usize,
    /// How long a fault holds before it is healed.
    pub hold: Duration,
    /// The faults drawn from (all by default).
    pub kinds: Vec<FaultKind>,
}

impl Profile {
    /// `quick` (CI, on every change), `full` (100 single faults on 3 managers), `full5` (the
    /// same on 5), `soak` (10 minutes of overlapping faults).
    ///
    /// # Errors
    /// An unknown name.
    pub fn named(name: &str) -> anyhow::Result<Self> {
        let base = Profile {
            name: "quick",
            managers: 3,
            workers: 2,
            faults: 5,
            soak: Duration::ZERO,
            clients: 6,
            secrets: 3,
            hold: Duration::from_secs(3),
            kinds: KINDS.to_vec(),
        };
        Ok(match name {
            "quick" => base,
            "full" => Profile { name: "full", faults: 100, ..base },
            "full5" => Profile { name: "full5", managers: 5, faults: 100, ..base },
            "soak" => Profile { name: "soak", faults: 0, soak: Duration::from_secs(600), ..base },
            other => bail!("unknown profile {other:?}: one of quick, full, full5, soak"),
        })
    }
}

/// The faults the schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    KillLeader,
    KillFollower,
    KillTwo,
    PauseLeader,
    PauseFollower,
    IsolateLeader,
    IsolateFollower,
    LeaderInMinority,
    OneWayDropToLeader,
    RestartAll,
    WorkerCutOff,
}

const KINDS: [FaultKind; 11] = [
    FaultKind::KillLeader,
    FaultKind::KillFollower,
    FaultKind::KillTwo,
    FaultKind::PauseLeader,
    FaultKind::PauseFollower,
    FaultKind::IsolateLeader,
    FaultKind::IsolateFollower,
    FaultKind::LeaderInMinority,
    FaultKind::OneWayDropToLeader,
    FaultKind::RestartAll,
    FaultKind::WorkerCutOff,
];

impl FaultKind {
    /// Parses a fault's name as the report prints it (`KillLeader`, `IsolateFollower`, ...).
    ///
    /// # Errors
    /// An unknown name, with the known ones.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        KINDS.iter().copied().find(|k| format!("{k:?}") == name).ok_or_else(|| {
            let known: Vec<String> = KINDS.iter().map(|k| format!("{k:?}")).collect();
            anyhow::anyhow!("unknown fault {name:?}: one of {}", known.join(", "))
        })
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub operations: usize,
    pub indeterminate: usize,
    /// Service updates and token operations that succeeded (load, not modelled).
    pub other_operations: usize,
    pub faults: BTreeMap<String, usize>,
    pub anomalies: Vec<String>,
    pub lost_writes: Vec<String>,
    pub diverged: Vec<String>,
    pub crashed: Vec<String>,
    pub canary_in: Vec<String>,
    /// Worker files that do not hold what their task references, once everything healed.
    pub stale_files: Vec<String>,
    /// The longest time from a heal to the next acknowledged write, and after which fault.
    pub longest_resume: Duration,
    pub longest_resume_after: String,
    /// The longest time from a heal to every task file at the then latest version.
    pub longest_delivery: Duration,
}

impl Report {
    fn note_resume(&mut self, took: Duration, after: impl std::fmt::Debug) {
        if took > self.longest_resume {
            self.longest_resume = took;
            self.longest_resume_after = format!("{after:?}");
        }
    }

    /// Whether the run kept every invariant.
    pub fn ok(&self) -> bool {
        self.anomalies.is_empty()
            && self.lost_writes.is_empty()
            && self.diverged.is_empty()
            && self.crashed.is_empty()
            && self.canary_in.is_empty()
            && self.stale_files.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(
            f,
            "seed {}: {} secret operations ({} indeterminate), {} service and token operations",
            self.seed, self.operations, self.indeterminate, self.other_operations
        )?;
        writeln!(f, "  faults: {}", faults.join(", "))?;
        writeln!(
            f,
            "  anomalies {}, acknowledged writes lost {}, managers diverged {}, crashed {}, stale worker files {}, \
             canary in {} files",
            self.anomalies.len(),
            self.lost_writes.len(),
            self.diverged.len(),
            self.crashed.len(),
            self.stale_files.len(),
            self.canary_in.len()
        )?;
        writeln!(
            f,
            "  longest after a heal: {:.1} s to resume writes (after {}), {:.1} s to deliver the latest version to every \
             task",
            self.longest_resume.as_secs_f64(),
            if self.longest_resume_after.is_empty() { "-" } else { &self.longest_resume_after },
            self.longest_delivery.as_secs_f64()
        )?;
        let all = [&self.anomalies, &self.lost_writes, &self.diverged, &self.crashed, &self.stale_files];
        for a in all.into_iter().flatten() {
            writeln!(f, "  {a}")?;
        }
        for p in &self.canary_in {
            writeln!(f, "  canary in {p}")?;
        }
        Ok(())
    }
}

/// The cluster under test. Processes are declared before the network so that they are
/// killed before their namespaces go.
struct Rig {
    bin: PathBuf,
    workers: Vec<WorkerProc>,
    managers: Vec<Option<ManagerProc>>,
    paused: Vec<bool>,
    dirs: Vec<PathBuf>,
    launches: Vec<Launch>,
    addrs: Vec<String>,
    client_dir: PathBuf,
    net: net::Net,
    root: tempfile::TempDir,
}

impl Rig {
    async fn start(bin: &Path, n: usize, workers: usize) -> anyhow::Result<Self> {
        let net = net::Net::new(n + workers)?;
        let root = tempfile::tempdir()?;
        let launches: Vec<Launch> = net.hosts.iter().map(|h| Launch { host: Some(h.clone()) }).collect();
        let dirs: Vec<PathBuf> = (1..=n).map(|i| root.path().join(format!("m{i}"))).collect();
        let (first, tokens) = ManagerProc::init_on(&launches[0], bin, &dirs[0], &[])?;
        let mut managers = vec![Some(first)];
        let join = managers[0].as_ref().map(|m| m.addr.clone()).unwrap_or_default();
        for i in 1..n {
            managers.push(Some(ManagerProc::join_on(&launches[i], bin, &dirs[i], &tokens.manager, &join, &[])?));
        }
        let addrs: Vec<String> = managers.iter().flatten().map(|m| m.addr.clone()).collect();
        let mut worker_procs = Vec::new();
        for j in 0..workers {
            let launch = Launch { host: Some(net.hosts[n + j].clone()) };
            let dir = root.path().join(format!("w{}", j + 1));
            worker_procs.push(WorkerProc::join_on(&launch, bin, &dir, &tokens.worker, &join, &[])?);
        }
        let rig = Self {
            bin: bin.to_path_buf(),
            workers: worker_procs,
            managers,
            paused: vec![false; n],
            client_dir: dirs[0].join("client"),
            dirs,
            launches,
            addrs,
            net,
            root,
        };
        let admin = rig.admin(0)?;
        eventually("every manager a voter", DEADLINE, || async {
            let s = admin.status().await.ok()?;
            (s.leader_id.is_some() && s.members.iter().filter(|m| m.voter).count() == n).then_some(())
        })
        .await?;
        Ok(rig)
    }

    fn admin(&self, i: usize) -> anyhow::Result<Client> {
        Ok(Client::from_dir(&self.client_dir, &self.addrs[i])?.with_timeout(Duration::from_secs(5)))
    }

    /// The index of the leader, as the first manager that answers sees it.
    async fn leader(&self, within: Duration) -> anyhow::Result<usize> {
        eventually("a leader", within, || async {
            for i in 0..self.addrs.len() {
                if self.managers[i].is_none() || self.paused[i] {
                    continue;
                }
                let Ok(admin) = self.admin(i) else { continue };
                if let Some(id) = admin.status().await.ok().and_then(|s| s.leader_id) {
                    return self.managers.iter().position(|m| m.as_ref().is_some_and(|m| m.id == id));
                }
            }
            None
        })
        .await
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut m) = self.managers[i].take() {
            m.kill();
        }
        self.paused[i] = false;
    }

    fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.managers[i].is_none() {
            let m = ManagerProc::restart_on(&self.launches[i], &self.bin, &self.dirs[i], &[])?;
            if m.addr != self.addrs[i] {
                bail!("manager {i} came back at {} instead of {}", m.addr, self.addrs[i]);
            }
            self.managers[i] = Some(m);
        }
        Ok(())
    }

    fn signal(&mut self, i: usize, pause: bool) {
        if let Some(m) = &self.managers[i] {
            crate::send_signal(m.pid(), if pause { libc::SIGSTOP } else { libc::SIGCONT });
            self.paused[i] = pause;
        }
    }

    /// Undoes every fault: network healed, paused managers resumed, killed ones restarted.
    fn heal(&mut self) -> anyhow::Result<()> {
        self.net.heal()?;
        for i in 0..self.addrs.len() {
            if self.paused[i] {
                self.signal(i, false);
            }
            self.restart(i)?;
        }
        Ok(())
    }

    /// Injects `kind`, given the index of the leader.
    fn inject(&mut self, kind: FaultKind, leader: usize, rng: &mut StdRng) -> anyhow::Result<()> {
        let n = self.addrs.len();
        let follower = (leader + rng.gen_range(1..n)) % n;
        match kind {
            FaultKind::KillLeader => self.kill(leader),
            FaultKind::KillFollower => self.kill(follower),
            FaultKind::KillTwo => {
                self.kill(leader);
                self.kill(follower);
            }
            FaultKind::PauseLeader => self.signal(leader, true),
            FaultKind::PauseFollower => self.signal(follower, true),
            FaultKind::IsolateLeader => self.net.partition(&[leader])?,
            FaultKind::IsolateFollower => self.net.partition(&[follower])?,
            FaultKind::LeaderInMinority => {
                let side: Vec<usize> = (0..(n - 1) / 2).map(|k| (leader + k) % n).collect();
                self.net.partition(&side)?;
            }
            FaultKind::OneWayDropToLeader => self.net.drop_from(Some(follower), leader)?,
            // Every manager killed and started again at once (the others stay down until
            // the heal).
            FaultKind::RestartAll => {
                for i in 0..n {
                    self.kill(i);
                }
                for i in 0..n {
                    self.restart(i)?;
                }
            }
            FaultKind::WorkerCutOff if !self.workers.is_empty() => {
                self.net.partition(&[n + rng.gen_range(0..self.workers.len())])?;
            }
            FaultKind::WorkerCutOff => {}
        }
        Ok(())
    }
}

/// What the clients share: the secrets, the next value size of each, the history, the
/// count of acknowledged writes, the run's clock and seed, the signal to stop.
struct Workload {
    names: Vec<String>,
    sizes: Vec<AtomicU32>,
    history: Mutex<BTreeMap<String, Vec<Op<SecretCall, SecretAnswer>>>>,
    acked: AtomicU32,
    start: Instant,
    seed: u64,
    stop: AtomicBool,
    /// The service's replicas (one per worker).
    workers: u32,
    /// Service updates and token operations that succeeded.
    others: AtomicU32,
}

/// A service update (replicas set to what they are: a committed change that moves nothing)
/// or an API token made and revoked.
async fn other(admin: &Client, roll: u32, workers: &u32, others: &AtomicU32) {
    let ok = if roll % 2 == 0 && *workers > 0 {
        let update = coffer_api::services::ServiceUpdate { replicas: Some(*workers), ..Default::default() };
        admin.update_service(SERVICE, &update).await.is_ok()
    } else {
        let name = format!("chaos-{:08x}", rand::random::<u32>());
        match admin.create_api_token(&name, coffer_api::tokens::TokenScope::ReadOnly).await {
            Ok(t) => admin.revoke_api_token(&t.id).await.is_ok(),
            Err(_) => false,
        }
    };
    if ok {
        others.fetch_add(1, Ordering::Relaxed);
    }
}

/// One client: its own connection to each manager, random operations until told to stop.
async fn client(id: usize, admins: Vec<Client>, w: Arc<Workload>) {
    let Workload { names, sizes, history, acked, start, seed, stop, workers, others } = &*w;
    let (start, seed) = (*start, *seed);
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    while !stop.load(Ordering::Relaxed) {
        let k = rng.gen_range(0..names.len());
        let name = &names[k];
        let admin = &admins[rng.gen_range(0..admins.len())];
        let roll = rng.gen_range(0..100);
        // Service updates and token operations are load, not modelled: they must not break
        // what is checked (and a manager must not crash on them).
        if roll >= 95 {
            other(admin, roll, workers, others).await;
            continue;
        }
        // A list reads every secret at once: one read of each, with the list's times
        // (checked per secret, not for atomicity across them).
        if roll >= 80 {
            let invoke = start.elapsed().as_nanos() as u64;
            let Ok(all) = admin.secrets().await else { continue };
            let ret = Some(start.elapsed().as_nanos() as u64);
            let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
            for name in names {
                let output = Some(all.iter().find(|s| &s.name == name).map_or(SecretAnswer::Missing, |s| {
                    SecretAnswer::Versions(s.versions.iter().map(|v| v.size).collect())
                }));
                h.entry(name.clone()).or_default().push(Op {
                    client: id,
                    invoke,
                    ret,
                    input: SecretCall::Read,
                    output,
                });
            }
            continue;
        }
        let call = if roll < 10 {
            SecretCall::Create(CANARY.len() as u32 + sizes[k].fetch_add(1, Ordering::Relaxed))
        } else if roll < 45 {
            SecretCall::Rotate(CANARY.len() as u32 + sizes[k].fetch_add(1, Ordering::Relaxed))
        } else {
            SecretCall::Read
        };
        let invoke = start.elapsed().as_nanos() as u64;
        let output = match &call {
            SecretCall::Create(size) => match admin.create_secret(name, &value(*size), BTreeMap::new()).await {
                Ok(_) => Some(SecretAnswer::Version(1)),
                Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => Some(SecretAnswer::Exists),
                Err(_) => None,
            },
            SecretCall::Rotate(size) => match admin.rotate_secret(name, &value(*size)).await {
                Ok(v) => Some(SecretAnswer::Version(v.version)),
                Err(e) if e.code() == Some(ErrorCode::NotFound) => Some(SecretAnswer::Missing),
                Err(_) => None,
            },
            SecretCall::Read => match admin.secret(name).await {
                Ok(info) => Some(SecretAnswer::Versions(info.versions.iter().map(|v| v.size).collect())),
                Err(e) if e.code() == Some(ErrorCode::NotFound) => Some(SecretAnswer::Missing),
                Err(_) => None,
            },
        };
        let ret = output.as_ref().map(|_| start.elapsed().as_nanos() as u64);
        if matches!(output, Some(SecretAnswer::Version(_))) {
            acked.fetch_add(1, Ordering::Relaxed);
        }
        // A read with no answer constrains nothing.
        if output.is_none() && call == SecretCall::Read {
            continue;
        }
        let op = Op { client: id, invoke, ret, input: call, output };
        history.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default().push(op);
        if ret.is_none() {
            // A call that timed out: back off a little, as a real client would.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A value of `size` bytes that starts with the canary.
fn value(size: u32) -> Vec<u8> {
    let mut v = CANARY.as_bytes().to_vec();
    v.resize(size as usize, b'.');
    v
}

/// The service every worker runs: `replicas` tasks mounting `secret` (latest version).
fn service(secret: &str, replicas: u32) -> coffer_api::services::ServiceCreate {
    coffer_api::services::ServiceCreate {
        name: SERVICE.into(),
        replicas: Some(replicas),
        constraints: vec![],
        secrets: vec![coffer_api::services::SecretRefSpec {
            source: secret.into(),
            target: Some(secret.into()),
            uid: None,
            gid: None,
            mode: None,
            version: None,
        }],
        labels: BTreeMap::new(),
        run: Default::default(),
    }
}

const SERVICE: &str = "chaos";

/// Waits until the clients' acknowledged writes grow past `from`; how long that took.
async fn resumed(acked: &AtomicU32, from: u32) -> anyhow::Result<Duration> {
    let began = Instant::now();
    eventually("writes to resume after a heal", Duration::from_secs(120), || async {
        (acked.load(Ordering::Relaxed) > from).then_some(())
    })
    .await?;
    Ok(began.elapsed())
}

/// Runs `profile` with `seed` against the `coffer` binary `bin`.
///
/// # Errors
/// When the harness itself fails (a host or a manager that cannot be made); what the run
/// found is in the report.
pub async fn run(bin: &Path, profile: &Profile, seed: u64) -> anyhow::Result<Report> {
    let mut rig = Rig::start(bin, profile.managers, profile.workers).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let w = Arc::new(Workload {
        names: (0..profile.secrets).map(|i| format!("s{i}")).collect(),
        sizes: (0..profile.secrets).map(|_| AtomicU32::new(1)).collect(),
        history: Mutex::default(),
        acked: AtomicU32::new(0),
        start: Instant::now(),
        seed,
        stop: AtomicBool::new(false),
        workers: profile.workers as u32,
        others: AtomicU32::new(0),
    });
    let (names, acked) = (&w.names, &w.acked);
    // The first secret exists before the clients start, for the service that mounts it;
    // its creation is the first operation of its history.
    let admin = rig.admin(0)?;
    let invoke = w.start.elapsed().as_nanos() as u64;
    admin.create_secret(&names[0], &value(CANARY.len() as u32), BTreeMap::new()).await?;
    let op = Op {
        client: usize::MAX,
        invoke,
        ret: Some(w.start.elapsed().as_nanos() as u64),
        input: SecretCall::Create(CANARY.len() as u32),
        output: Some(SecretAnswer::Version(1)),
    };
    w.history.lock().unwrap_or_else(|p| p.into_inner()).insert(names[0].clone(), vec![op]);
    if profile.workers > 0 {
        admin.create_service(&service(&names[0], profile.workers as u32)).await?;
    }
    let mut clients = Vec::new();
    for id in 0..profile.clients {
        let admins = (0..profile.managers).map(|i| rig.admin(i)).collect::<anyhow::Result<Vec<_>>>()?;
        clients.push(tokio::spawn(client(id, admins, w.clone())));
    }
    let mut report = Report { seed, ..Report::default() };
    resumed(acked, 0).await.context("the workload never wrote")?;

    // One fault at a time: inject, hold, heal, wait for writes, next.
    for _ in 0..profile.faults {
        let kind = profile.kinds[rng.gen_range(0..profile.kinds.len())];
        let leader = rig.leader(DEADLINE).await.with_context(|| format!("before {kind:?}"))?;
        rig.inject(kind, leader, &mut rng).with_context(|| format!("inject {kind:?}"))?;
        eprintln!("chaos: {:>6.1} s  {kind:?}", w.start.elapsed().as_secs_f64());
        *report.faults.entry(format!("{kind:?}")).or_default() += 1;
        tokio::time::sleep(profile.hold).await;
        rig.heal()?;
        let took = resumed(acked, acked.load(Ordering::Relaxed)).await.with_context(|| format!("after {kind:?}"))?;
        eprintln!(
            "chaos: {:>6.1} s  healed; writes resumed in {:.1} s",
            w.start.elapsed().as_secs_f64(),
            took.as_secs_f64()
        );
        report.note_resume(took, kind);
        if profile.workers > 0 {
            match rig.delivered(&names[0], profile.workers).await {
                Ok(took) => {
                    eprintln!(
                        "chaos: {:>6.1} s  latest version in every task after {:.1} s",
                        w.start.elapsed().as_secs_f64(),
                        took.as_secs_f64()
                    );
                    report.longest_delivery = report.longest_delivery.max(took);
                }
                Err(e) => report.stale_files.push(format!("after {kind:?}: {e}")),
            }
        }
    }
    // Overlapping faults: a new one every so often, each healed at a random later point.
    let soak_until = Instant::now() + profile.soak;
    while Instant::now() < soak_until {
        let kind = profile.kinds[rng.gen_range(0..profile.kinds.len())];
        // Faults on top of faults may leave no leader (a quorum down or cut off): then
        // everything is healed before the next.
        let Ok(leader) = rig.leader(Duration::from_secs(10)).await else {
            rig.heal()?;
            eprintln!("chaos: {:>6.1} s  no leader: healed", w.start.elapsed().as_secs_f64());
            continue;
        };
        rig.inject(kind, leader, &mut rng).with_context(|| format!("inject {kind:?}"))?;
        eprintln!("chaos: {:>6.1} s  {kind:?} (overlapping)", w.start.elapsed().as_secs_f64());
        *report.faults.entry(format!("{kind:?}")).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..3000))).await;
        if rng.gen_bool(0.5) {
            rig.heal()?;
            let took =
                resumed(acked, acked.load(Ordering::Relaxed)).await.with_context(|| format!("after {kind:?}"))?;
            report.note_resume(took, kind);
        }
    }
    rig.heal()?;
    resumed(acked, acked.load(Ordering::Relaxed)).await.context("after the last heal")?;
    w.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    let histories = std::mem::take(&mut *w.history.lock().unwrap_or_else(|p| p.into_inner()));
    report.operations = histories.values().map(Vec::len).sum();
    report.indeterminate = histories.values().flatten().filter(|o| o.ret.is_none()).count();
    report.other_operations = w.others.load(Ordering::Relaxed) as usize;
    let acked_writes: Vec<(String, u32, u32)> = histories
        .iter()
        .flat_map(|(name, ops)| {
            ops.iter().filter_map(move |o| match (&o.input, &o.output) {
                (SecretCall::Create(s) | SecretCall::Rotate(s), Some(SecretAnswer::Version(v))) => {
                    Some((name.clone(), *v, *s))
                }
                _ => None,
            })
        })
        .collect();
    let last = check_end_state(&rig, names, &acked_writes, &mut report).await?;
    // The final reads close each history: every write that took effect is in them.
    let at = w.start.elapsed().as_nanos() as u64;
    let histories: BTreeMap<_, _> = names
        .iter()
        .map(|n| {
            let ops = histories.get(n).cloned().unwrap_or_default();
            (n.clone(), linearizable::settle(ops, last.get(n).map(Vec::as_slice), at))
        })
        .collect();
    let init = |name: &str| OrderedSecret {
        state: Secret::default(),
        order: Arc::new(last.get(name).cloned().unwrap_or_default()),
    };
    report.anomalies = linearizable::check(init, histories).into_iter().map(|a| a.to_string()).collect();
    if profile.workers > 0 {
        let latest = last.get(&names[0]).and_then(|v| v.last().copied());
        check_worker_files(&rig, &names[0], latest, profile.workers, &mut report).await;
    }
    for (i, m) in rig.managers.iter_mut().enumerate() {
        if m.as_mut().is_none_or(|m| m.exited()) {
            report.crashed.push(format!("manager {} is not running at the end", i + 1));
        }
    }
    drop(rig.managers.drain(..));
    report.canary_in = crate::files_under(rig.root.path())
        .into_iter()
        .filter(|f| std::fs::read(f).unwrap_or_default().windows(CANARY.len()).any(|w| w == CANARY.as_bytes()))
        .map(|f| f.display().to_string())
        .collect();
    // For a post-mortem: COFFER_CHAOS_KEEP=1 keeps the data dirs and the nodes' logs.
    if std::env::var_os("COFFER_CHAOS_KEEP").is_some() {
        drop(rig.workers.drain(..));
        let Rig { root, .. } = rig;
        eprintln!("chaos: data dirs and logs kept in {}", root.keep().display());
    }
    Ok(report)
}

/// After the last heal: every manager has every acknowledged write, and they all agree.
async fn check_end_state(
    rig: &Rig,
    names: &[String],
    acked: &[(String, u32, u32)],
    report: &mut Report,
) -> anyhow::Result<BTreeMap<String, Vec<u32>>> {
    let mut views = Vec::new();
    for i in 0..rig.addrs.len() {
        let admin = rig.admin(i)?;
        let view = eventually("every manager answers", DEADLINE, || async {
            let mut view = BTreeMap::new();
            for name in names {
                match admin.secret(name).await {
                    Ok(info) => view.insert(name.clone(), info.versions.iter().map(|v| v.size).collect::<Vec<_>>()),
                    Err(e) if e.code() == Some(ErrorCode::NotFound) => None,
                    Err(_) => return None,
                };
            }
            Some(view)
        })
        .await?;
        for (name, version, size) in acked {
            if view.get(name).and_then(|v| v.get(*version as usize - 1)) != Some(size) {
                report
                    .lost_writes
                    .push(format!("manager {}: {name} version {version} (size {size}) acknowledged, missing", i + 1));
            }
        }
        views.push(view);
    }
    for (i, v) in views.iter().enumerate().skip(1) {
        if *v != views[0] {
            report.diverged.push(format!("manager {} differs from manager 1: {v:?} vs {:?}", i + 1, views[0]));
        }
    }
    // The whole state, not only the workload's secrets: at one applied index, one digest.
    let admins = (0..rig.addrs.len()).map(|i| rig.admin(i)).collect::<anyhow::Result<Vec<_>>>()?;
    let digests = eventually("every manager at one applied index", DEADLINE, || async {
        let mut ds = Vec::new();
        for a in &admins {
            ds.push(a.state_digest().await.ok()?);
        }
        ds.iter().all(|d| d.applied_index == ds[0].applied_index).then_some(ds)
    })
    .await;
    match digests {
        Ok(ds) => {
            for (i, d) in ds.iter().enumerate().skip(1) {
                if d.sha256 != ds[0].sha256 {
                    report.diverged.push(format!(
                        "manager {} state digest {} differs from manager 1's {} at applied index {:?}",
                        i + 1,
                        d.sha256,
                        ds[0].sha256,
                        d.applied_index
                    ));
                }
            }
        }
        Err(e) => report.diverged.push(format!("the managers never reached one applied index: {e}")),
    }
    Ok(views.swap_remove(0))
}

impl Rig {
    /// The service's task files for `secret` on every worker, with their sizes.
    fn task_files(&self, secret: &str) -> Vec<(PathBuf, u64)> {
        self.workers
            .iter()
            .flat_map(|w| std::fs::read_dir(&w.secrets).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{SERVICE}."))))
            .map(|p| p.join(secret))
            .map(|f| {
                let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                (f, len)
            })
            .collect()
    }

    /// After a heal: how long until every task file holds the version of `secret` that was
    /// latest when this was called, or a later one (grants redeemed again).
    async fn delivered(&self, secret: &str, replicas: usize) -> anyhow::Result<Duration> {
        let began = Instant::now();
        let admin = self.admin(0)?;
        let from = eventually("the latest version", DEADLINE, || async { admin.secret(secret).await.ok() })
            .await?
            .latest_version;
        eventually("task files at the latest version", DEADLINE, || async {
            let info = admin.secret(secret).await.ok()?;
            let sizes: Vec<u64> =
                info.versions.iter().filter(|v| v.version >= from).map(|v| u64::from(v.size)).collect();
            let files = self.task_files(secret);
            (files.len() == replicas && files.iter().all(|(_, len)| sizes.contains(len))).then_some(())
        })
        .await?;
        Ok(began.elapsed())
    }
}

/// Once healed, every task of the service holds the latest version of `secret` (the size of
/// a value says which), and there are as many tasks as replicas.
async fn check_worker_files(rig: &Rig, secret: &str, latest: Option<u32>, replicas: usize, report: &mut Report) {
    let want = latest.map_or(0, u64::from);
    let settled = eventually("worker files at the latest version", DEADLINE, || async {
        let fs = rig.task_files(secret);
        (fs.len() == replicas && fs.iter().all(|(_, len)| *len == want)).then_some(())
    })
    .await;
    if settled.is_err() {
        let fs = rig.task_files(secret);
        report.stale_files.push(format!("{} task files, {replicas} replicas, latest size {want}: {fs:?}", fs.len()));
    }
}
