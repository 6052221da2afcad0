//! What `worker join` records for `worker run` (`<data-dir>/worker.json`): where secrets go,
//! the `--on-change` command, the task runtime, and the managers the worker knows.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::local::data_dir::{write_atomic, DataDir};

/// What `worker join` records for `worker run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSettings {
    pub secrets_dir: PathBuf,
    pub insecure_disk: bool,
    pub on_change: Option<String>,
    /// Managers to try, learned from assignments; the join address first.
    pub managers: Vec<String>,
    /// The hostname reported at join, if not the machine's.
    #[serde(default)]
    pub hostname: Option<String>,
    /// What runs the tasks: nothing (files only), or containers on the local engine.
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// The engine's socket, for `--runtime docker` (default `/var/run/docker.sock`).
    #[serde(default)]
    pub docker_socket: Option<String>,
}

/// What runs a worker's tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Files only: an external orchestrator runs the tasks.
    #[default]
    None,
    /// A container per task on the local Docker engine, with the task's secrets mounted.
    Docker,
}

fn settings_path(dir: &DataDir) -> PathBuf {
    dir.root().join("worker.json")
}

impl WorkerSettings {
    /// The settings of a worker joining with `join` as its first manager.
    pub fn new(secrets_dir: PathBuf, insecure_disk: bool, on_change: Option<String>, join: &str) -> Self {
        Self {
            secrets_dir,
            insecure_disk,
            on_change,
            managers: vec![join.to_string()],
            hostname: None,
            runtime: RuntimeKind::None,
            docker_socket: None,
        }
    }

    pub fn load(dir: &DataDir) -> anyhow::Result<Self> {
        let p = settings_path(dir);
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", p.display()))
    }

    pub fn save(&self, dir: &DataDir) -> anyhow::Result<()> {
        write_atomic(&settings_path(dir), serde_json::to_string_pretty(self)?.as_bytes(), 0o644)
    }
}
