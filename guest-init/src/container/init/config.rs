//! What the agent decides for a container init: namespaces, root, process.
//! It travels as JSON (see `container/pipe.rs`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vpod_agent_api::pb::Process;

use crate::container::seccomp::Filters;

/// Everything the container's side needs, decided by the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    /// Which namespaces to make or join.
    pub namespaces: Namespaces,
    /// The process to run in them.
    pub process: ProcessConfig,
}

/// New namespaces and a root to set up, or the namespaces of a running
/// container to join (exec).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Namespaces {
    /// The container's own (StartContainer).
    New(RootConfig),
    /// Those of the running container process `pid` (exec).
    Join {
        /// The container's process, guest pid.
        pid: i32,
    },
}

/// The container's root: the overlay to pivot into and what to mount on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootConfig {
    /// The overlay the agent mounted.
    pub rootfs: PathBuf,
    /// The container's devpts instance (the agent allocates its ptys there).
    pub pts: PathBuf,
    /// UTS hostname; empty keeps the pod's.
    pub hostname: String,
    /// Volumes, ephemeral dirs and tmpfs mounts, in order.
    pub mounts: Vec<BindMount>,
    /// Paths hidden under an empty tmpfs or /dev/null (unless privileged).
    pub masked_paths: Vec<String>,
    /// Paths remounted read-only (unless privileged).
    pub readonly_paths: Vec<String>,
    /// Remount / read-only after the pivot.
    pub read_only_rootfs: bool,
    /// Size of /dev/shm; 0 is 64 MiB.
    pub shm_size_bytes: u64,
    /// Writable /sys, no masks.
    pub privileged: bool,
    /// The pod's namespace holder (`container/podns.rs`): its IPC namespace
    /// is joined, and its PID namespace when `share_pid`; `None` makes both
    /// new.
    #[serde(default)]
    pub pod_ns_holder: Option<i32>,
    /// Join the pod's PID namespace instead of making one.
    #[serde(default)]
    pub share_pid: bool,
    /// Namespaced sysctls to write once in the pod's namespaces (checked by
    /// the agent).
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
}

/// One mount of the container, in the container's namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindMount {
    /// A guest path (bind) or None for a fresh tmpfs.
    pub source: Option<PathBuf>,
    /// Absolute path in the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// A tmpfs's size; 0 is the kernel's default.
    pub tmpfs_size_bytes: u64,
}

/// The process: what to run, as whom, confined how.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// argv; `args[0]` is looked up in the process's PATH.
    pub args: Vec<String>,
    /// The whole environment.
    pub env: Vec<String>,
    /// Working directory; empty is /.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// stdin is a TTY to make the controlling terminal.
    pub tty: bool,
    /// `None`: every capability (privileged).
    pub capabilities: Option<Vec<String>>,
    /// (RLIMIT_* name, soft, hard).
    pub rlimits: Vec<(String, u64, u64)>,
    /// Set no_new_privs before exec.
    pub no_new_privileges: bool,
    /// Seccomp filters to install, in order (none: unconfined).
    #[serde(default)]
    pub seccomp: Filters,
    /// `None`: the agent's own.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

impl ProcessConfig {
    /// The config for the container's main process (`base` == `p`) or an
    /// exec (`p` brings args, env, cwd, tty; identity and confinement are
    /// the container's, `base`).
    pub fn new(base: &Process, p: &Process, privileged: bool, seccomp: &Filters) -> Self {
        ProcessConfig {
            args: p.args.clone(),
            env: p.env.clone(),
            cwd: if p.cwd.is_empty() {
                base.cwd.clone()
            } else {
                p.cwd.clone()
            },
            uid: base.uid,
            gid: base.gid,
            additional_gids: base.additional_gids.clone(),
            tty: p.tty,
            capabilities: (!privileged).then(|| base.capabilities.clone()),
            rlimits: base
                .rlimits
                .iter()
                .map(|r| (r.kind.clone(), r.soft, r.hard))
                .collect(),
            no_new_privileges: base.no_new_privileges,
            seccomp: seccomp.clone(),
            oom_score_adj: base.oom_score_adj,
        }
    }
}
