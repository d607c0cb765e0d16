//! The pod's containers: each one's record, and the registry the
//! operations (one file each beside this one) look them up in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use vpod_agent_api::pb::{ContainerInfo, CreateContainerRequest, ExitStatus, OutputChunk};

use super::cgroup::{self, Cgroup};
use super::error::ContainerError;
use super::init::config::BindMount;
use super::state::State;
use super::stdio::AsyncEnd;
use crate::disks::Disks;
use crate::log::AgentLog;
use crate::reaper::Reaper;
use crate::volumes::Volumes;

/// Where container rootfs overlays are mounted.
pub const ROOTFS_ROOT: &str = "/run/vpod/containers";

/// One container: what CreateContainer made, its state, its stdio.
#[derive(Debug)]
pub struct Container {
    pub(super) id: String,
    pub(super) req: CreateContainerRequest,
    pub(super) rootfs: PathBuf,
    pub(super) layer: PathBuf,
    pub(super) mounts: Vec<BindMount>,
    pub(super) cgroup: Cgroup,
    pub(super) state: Mutex<State>,
    pub(super) exit: watch::Sender<Option<ExitStatus>>,
    pub(super) output: Arc<tokio::sync::Mutex<mpsc::Receiver<OutputChunk>>>,
    pub(super) output_tx: Mutex<Option<mpsc::Sender<OutputChunk>>>,
    pub(super) stdin: tokio::sync::Mutex<Option<AsyncEnd>>,
    pub(super) pty: Mutex<Option<AsyncEnd>>,
    /// Signals held until the process handles them (see `kill.rs`), one bit each.
    pub(super) held_signals: Mutex<u64>,
    /// The process's seccomp filters (its execs' too), compiled at create.
    pub(super) seccomp: super::seccomp::Filters,
}

/// The most of a termination log that is read (kubelet's own cap).
pub const MAX_TERMINATION_MESSAGE: u64 = 4096;

impl Container {
    /// What the process wrote to its termination log (`termination_message_path`, one of its
    /// mounts): read from the mount's guest source, the first
    /// [`MAX_TERMINATION_MESSAGE`] bytes; empty if it has none.
    pub(super) fn termination_message(&self) -> Vec<u8> {
        use std::io::Read;
        let want = &self.req.termination_message_path;
        let Some(src) = self
            .mounts
            .iter()
            .filter(|m| !want.is_empty() && &m.destination == want)
            .find_map(|m| m.source.as_ref())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Ok(f) = std::fs::File::open(src) {
            let _ = f.take(MAX_TERMINATION_MESSAGE).read_to_end(&mut out);
        }
        out
    }

    pub(super) fn state(&self) -> State {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_state(&self, s: State) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Created → Starting in one step, so a second start is refused.
    pub(super) fn begin_start(&self) -> Result<(), ContainerError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.can_start() {
            drop(st);
            return Err(self.wrong_state("it can only start once"));
        }
        *st = State::Starting;
        Ok(())
    }

    /// The running process's pid if the state passes `allowed`; else the
    /// state error that says `what`.
    pub(super) fn pid_if(
        &self,
        allowed: fn(State) -> bool,
        what: &'static str,
    ) -> Result<i32, ContainerError> {
        let st = self.state();
        match st.pid() {
            Some(pid) if allowed(st) => Ok(pid),
            _ => Err(self.wrong_state(what)),
        }
    }

    /// The container's devpts instance, mounted next to its rootfs.
    pub(super) fn pts(&self) -> PathBuf {
        pts_dir(&self.rootfs)
    }

    pub(super) fn wrong_state(&self, what: &'static str) -> ContainerError {
        ContainerError::State {
            id: self.id.clone(),
            state: self.state().name(),
            what,
        }
    }

    pub(super) fn io(
        &self,
        op: impl Into<String>,
    ) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
        let op = op.into();
        move |source| ContainerError::Io {
            id: self.id.clone(),
            op,
            source,
        }
    }
}

/// Where a container's devpts instance sits: beside its rootfs.
pub(super) fn pts_dir(rootfs: &Path) -> PathBuf {
    rootfs.with_file_name("pts")
}

/// The pod's containers.
#[derive(Debug)]
pub struct Containers {
    pub(super) map: Mutex<HashMap<String, Arc<Container>>>,
    pub(super) reaper: Arc<Reaper>,
    pub(super) disks: Arc<Disks>,
    pub(super) volumes: Arc<Volumes>,
    pub(super) cgroup_parent: PathBuf,
    pub(super) log: Arc<AgentLog>,
    /// The pod's shared IPC (and, when asked, PID) namespace.
    pub(super) pod_ns: super::podns::PodNamespaces,
}

/// Whether `id` may name a container (it becomes a path component).
pub fn valid_id(id: &str) -> bool {
    crate::volumes::valid_name(id) && id.len() <= 64
}

impl Containers {
    /// No containers yet; their cgroups go under
    /// [`cgroup::CONTAINERS_CGROUP`].
    pub fn new(
        reaper: Arc<Reaper>,
        disks: Arc<Disks>,
        volumes: Arc<Volumes>,
        log: Arc<AgentLog>,
    ) -> Self {
        Containers {
            map: Mutex::default(),
            reaper,
            disks,
            volumes,
            cgroup_parent: PathBuf::from(cgroup::CONTAINERS_CGROUP),
            log,
            pod_ns: Default::default(),
        }
    }

    /// The container `id`.
    pub fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// Every container, sorted by id.
    pub fn list(&self) -> Vec<ContainerInfo> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ContainerInfo> = map
            .values()
            .map(|c| {
                let (state, pid) = c.state().info();
                ContainerInfo {
                    id: c.id.clone(),
                    state: state as i32,
                    pid,
                    exit: c.exit.borrow().clone(),
                    args: c
                        .req
                        .process
                        .as_ref()
                        .map(|p| p.args.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("app-1.x_y"));
        assert!(!valid_id(&"a".repeat(65)));
    }
}
