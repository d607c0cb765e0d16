//! The pod marker: what a shim leaves in each task's bundle so that
//! containerd's `delete` after a crash finds the dead shim's pod dirs, and
//! the cleanup it does.

use std::path::PathBuf;

use crate::config::ShimConfig;
use crate::pod::pod_id;
use crate::rootfs;

/// In each task's bundle: which pod dirs the task's shim made, and which
/// shim, so `delete` after a crash can remove them. containerd gives that
/// `delete` no runtime options, so the shim config can't tell it.
pub const POD_MARKER: &str = "vpod-shim.json";

/// What [`POD_MARKER`] holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PodMarker {
    /// The shim that made the pod.
    pub shim_pid: u32,
    /// The shim's start time (`/proc/PID/stat` field 22): a recycled pid is
    /// not the shim.
    pub shim_start_time: u64,
    /// The pod's state dir (slots, sockets, console).
    pub state_dir: PathBuf,
    /// The pod's ephemeral disk dir.
    pub ephemeral_dir: PathBuf,
    /// Where the shim builds rootfs disks (its half-built ones are named by its pid).
    pub rootfs_cache: PathBuf,
}

/// Start time of process `pid` in clock ticks after boot (`/proc/PID/stat`
/// field 22), if it exists.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parens; field 3 on
    // follows the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl PodMarker {
    pub fn for_pod(cfg: &ShimConfig, namespace: &str, id: &str) -> PodMarker {
        let name = format!("{namespace}-{}", pod_id(id));
        let me = std::process::id();
        PodMarker {
            shim_pid: me,
            shim_start_time: proc_start_time(me).unwrap_or(0),
            state_dir: cfg.state_dir.join(&name),
            ephemeral_dir: cfg.ephemeral_dir.join(&name),
            rootfs_cache: cfg.rootfs_cache.clone(),
        }
    }

    /// Written (0600) into `bundle`, atomically.
    pub fn write(&self, bundle: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = bundle.join(format!(".{POD_MARKER}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, bundle.join(POD_MARKER))
    }

    pub fn read(bundle: &std::path::Path) -> Option<PodMarker> {
        serde_json::from_slice(&std::fs::read(bundle.join(POD_MARKER)).ok()?).ok()
    }

    pub fn shim_alive(&self) -> bool {
        self.shim_start_time != 0 && proc_start_time(self.shim_pid) == Some(self.shim_start_time)
    }
}

/// What [`clean_after_dead_shim`] did.
#[derive(Debug, PartialEq)]
pub enum Cleanup {
    /// No marker: no pod dirs were made for this task (or already cleaned).
    NoMarker,
    /// The pod's shim still runs (containerd deletes a task of a live pod,
    /// e.g. after a failed start): nothing of the pod is touched.
    ShimAlive(u32),
    /// The shim is gone: its pod dirs and half-built disks are removed.
    Cleaned(Vec<PathBuf>),
}

/// A dir the marker may name for removal: absolute, below some parent, no `..`.
fn removable(dir: &std::path::Path) -> bool {
    use std::path::Component;
    dir.is_absolute()
        && dir.components().count() > 2
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// `delete` after the shim died: removes the pod's state and ephemeral dirs
/// and the shim's half-built rootfs disks, unless the shim still runs.
///
/// Nothing else is left on the host: the VMM and its threads lived in the
/// shim's process and died with it, and the tap it opened in the pod's netns
/// (CNI's, removed by CNI) was not persistent: it went away when its last fd
/// closed. The marker itself stays: containerd removes the bundle.
pub fn clean_after_dead_shim(bundle: &std::path::Path) -> Cleanup {
    let Some(m) = PodMarker::read(bundle) else {
        return Cleanup::NoMarker;
    };
    if m.shim_alive() {
        return Cleanup::ShimAlive(m.shim_pid);
    }
    let mut removed = Vec::new();
    for dir in [&m.state_dir, &m.ephemeral_dir] {
        if removable(dir) && std::fs::remove_dir_all(dir).is_ok() {
            removed.push(dir.clone());
        }
    }
    rootfs::remove_leftovers(&m.rootfs_cache, m.shim_pid);
    Cleanup::Cleaned(removed)
}
