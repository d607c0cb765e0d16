//! The pod marker: what a shim leaves in each task's bundle so that
//! containerd's `delete` after a crash finds the dead shim's pod dirs, and
//! the cleanup it does.
//!
//! The marker is only a hint: `delete` removes a dir it names only when the
//! dir is one the shim made for this very task ([`pod_dir`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
    /// The dir the shim makes pod state dirs in (its config's `state_dir`); a marker of a shim
    /// before this field means the compiled-in default.
    #[serde(default = "default_state_root")]
    pub state_root: PathBuf,
    /// The dir the shim makes pod ephemeral dirs in (its config's `ephemeral_dir`).
    #[serde(default = "default_ephemeral_root")]
    pub ephemeral_root: PathBuf,
}

fn default_state_root() -> PathBuf {
    ShimConfig::default().state_dir
}

fn default_ephemeral_root() -> PathBuf {
    ShimConfig::default().ephemeral_dir
}

/// The name of the state and ephemeral dirs of the pod whose first task is
/// `id` (the sandbox's, or a lone container's) in `namespace`.
pub fn pod_dir_name(namespace: &str, id: &str) -> String {
    format!("{namespace}-{}", pod_id(id))
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
        let name = pod_dir_name(namespace, id);
        let me = std::process::id();
        PodMarker {
            shim_pid: me,
            shim_start_time: proc_start_time(me).unwrap_or(0),
            state_dir: cfg.state_dir.join(&name),
            ephemeral_dir: cfg.ephemeral_dir.join(&name),
            rootfs_cache: cfg.rootfs_cache.clone(),
            state_root: cfg.state_dir.clone(),
            ephemeral_root: cfg.ephemeral_dir.clone(),
        }
    }

    /// Written (0600) into `bundle`, atomically.
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
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

    pub fn read(bundle: &Path) -> Option<PodMarker> {
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

/// Why `delete` leaves a dir the marker names alone.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("not an absolute path below some parent without `..`")]
    NotPlain,
    #[error("not {expected}: the dir of this task's pod in the shim's dir")]
    NotThisPod { expected: PathBuf },
    #[error("its parent {path} is not the shim's: {why}")]
    UntrustedParent { path: PathBuf, why: String },
    #[error("a symlink")]
    Symlink,
    #[error("not a directory")]
    NotDir,
    #[error("owned by uid {0}, not the shim's")]
    Owner(u32),
    #[error("mode {0:o}, not the 0700 the shim makes")]
    Mode(u32),
    #[error("lstat: {0}")]
    Stat(String),
}

/// Absolute, below some parent, no `..`.
fn plain(dir: &Path) -> bool {
    use std::path::Component;
    dir.is_absolute()
        && dir.components().count() > 2
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The uid the shim runs as (root, under containerd): the owner of every dir it makes.
fn shim_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `dir` and each of its ancestors: a directory owned by root or the shim's uid that no one
/// else may write into (unless sticky, like /tmp: there no one else may rename or remove what
/// the shim made). Only root or the shim could have put anything there, so a name found below
/// it can't be a link or dir someone else swapped in between the checks and the removal.
fn trusted_chain(dir: &Path) -> Result<(), Refused> {
    for a in dir.ancestors() {
        let untrusted = |why: String| Refused::UntrustedParent {
            path: a.to_owned(),
            why,
        };
        let m = std::fs::symlink_metadata(a).map_err(|e| untrusted(e.to_string()))?;
        if !m.is_dir() {
            return Err(untrusted("not a directory".into()));
        }
        if m.uid() != 0 && m.uid() != shim_uid() {
            return Err(untrusted(format!("owned by uid {}", m.uid())));
        }
        if m.mode() & 0o022 != 0 && m.mode() & libc::S_ISVTX == 0 {
            return Err(untrusted(format!(
                "mode {:o}: others may write into it",
                m.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// The dir to remove for `dir`, a pod dir the marker names, whose parent the marker says is
/// `root`; `None` when it is gone already.
///
/// Which parents are the shim's? `delete` gets no runtime options, so it can't know the
/// configured dirs, and a list of the compiled-in defaults would leave every configured pod's
/// dirs behind. So the parent is whatever the marker recorded, and must be a trusted chain
/// ([`trusted_chain`]); below it, only the one name the shim gives this task's pod
/// (`<namespace>-<task id>`, the id from the bundle's own name, not from the marker), and only a
/// real directory (lstat) with the owner and mode 0700 the shim makes it with
/// (`vpod_sandbox::pod::files`). A crafted marker can at worst name a dir that looks exactly
/// like this pod's own.
pub fn pod_dir(dir: &Path, root: &Path, name: &str) -> Result<Option<PathBuf>, Refused> {
    if !plain(dir) || !plain(root) {
        return Err(Refused::NotPlain);
    }
    let expected = root.join(name);
    if dir != expected {
        return Err(Refused::NotThisPod { expected });
    }
    let root = match std::fs::canonicalize(root) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Refused::UntrustedParent {
                path: root.to_owned(),
                why: e.to_string(),
            })
        }
    };
    trusted_chain(&root)?;
    let dir = root.join(name);
    let m = match std::fs::symlink_metadata(&dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Refused::Stat(e.to_string())),
    };
    if m.file_type().is_symlink() {
        return Err(Refused::Symlink);
    }
    if !m.is_dir() {
        return Err(Refused::NotDir);
    }
    if m.uid() != shim_uid() {
        return Err(Refused::Owner(m.uid()));
    }
    if m.mode() & 0o7777 != 0o700 {
        return Err(Refused::Mode(m.mode() & 0o7777));
    }
    Ok(Some(dir))
}

/// `delete` after the shim died: removes the pod's state and ephemeral dirs
/// and the shim's half-built rootfs disks, unless the shim still runs.
/// `bundle` is the task's bundle, which containerd names after the task id;
/// the task is in `namespace`. Only what [`pod_dir`] finds to be this
/// pod's is removed; anything else the marker names is left and logged.
///
/// Nothing else is left on the host: the VMM and its threads lived in the
/// shim's process and died with it, and the tap it opened in the pod's netns
/// (CNI's, removed by CNI) was not persistent: it went away when its last fd
/// closed. The marker itself stays: containerd removes the bundle.
pub fn clean_after_dead_shim(bundle: &Path, namespace: &str) -> Cleanup {
    let Some(m) = PodMarker::read(bundle) else {
        return Cleanup::NoMarker;
    };
    if m.shim_alive() {
        return Cleanup::ShimAlive(m.shim_pid);
    }
    let Some(id) = bundle.file_name().and_then(|n| n.to_str()) else {
        log::warn!(
            "delete: bundle {} names no task: nothing removed",
            bundle.display()
        );
        return Cleanup::Cleaned(Vec::new());
    };
    let name = pod_dir_name(namespace, id);
    let mut removed = Vec::new();
    for (dir, root) in [
        (&m.state_dir, &m.state_root),
        (&m.ephemeral_dir, &m.ephemeral_root),
    ] {
        match pod_dir(dir, root, &name) {
            Ok(Some(d)) => match std::fs::remove_dir_all(&d) {
                Ok(()) => removed.push(d),
                Err(e) => log::warn!("delete: remove {}: {e}", d.display()),
            },
            Ok(None) => {}
            Err(why) => log::warn!("delete: {} left alone: {why}", dir.display()),
        }
    }
    // Half-built disks are named by the dead shim's pid: removed only in a trusted cache dir.
    match std::fs::canonicalize(&m.rootfs_cache) {
        Ok(cache) if plain(&cache) => match trusted_chain(&cache) {
            Ok(()) => {
                rootfs::remove_leftovers(&cache, m.shim_pid);
            }
            Err(why) => log::warn!("delete: {} left alone: {why}", cache.display()),
        },
        Ok(cache) => log::warn!(
            "delete: {} left alone: {}",
            cache.display(),
            Refused::NotPlain
        ),
        Err(_) => {}
    }
    Cleanup::Cleaned(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    fn private_dir(d: &Path) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .unwrap();
    }

    /// Each way a named dir can fail to be the pod's own gives its reason.
    #[test]
    fn only_the_pods_own_dir_is_removable() {
        let base = std::env::temp_dir().join(format!("vpod-shim-poddir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("state");
        let own = root.join("k8s.io-p1");
        private_dir(&own);
        let name = pod_dir_name("k8s.io", "p1");
        assert_eq!(pod_dir(&own, &root, &name), Ok(Some(own.clone())));
        // Gone already: nothing to do, nothing refused.
        let gone = root.join(pod_dir_name("k8s.io", "p2"));
        assert_eq!(
            pod_dir(&gone, &root, &pod_dir_name("k8s.io", "p2")),
            Ok(None)
        );
        assert_eq!(
            pod_dir(&own, &root, &pod_dir_name("k8s.io", "p2")),
            Err(Refused::NotThisPod { expected: gone })
        );
        assert_eq!(
            pod_dir(&own, &base, &name),
            Err(Refused::NotThisPod {
                expected: base.join(&name)
            })
        );
        assert_eq!(
            pod_dir(Path::new("/tmp/k8s.io-p1"), Path::new("/tmp"), &name),
            Err(Refused::NotPlain)
        );
        assert_eq!(
            pod_dir(&root.join("../state/k8s.io-p1"), &root, &name),
            Err(Refused::NotPlain)
        );

        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(pod_dir(&own, &root, &name), Err(Refused::Mode(0o750)));
        std::fs::remove_dir(&own).unwrap();
        std::fs::write(&own, "").unwrap();
        assert_eq!(pod_dir(&own, &root, &name), Err(Refused::NotDir));
        std::fs::remove_file(&own).unwrap();
        let victim = base.join("victim");
        private_dir(&victim);
        std::os::unix::fs::symlink(&victim, &own).unwrap();
        assert_eq!(pod_dir(&own, &root, &name), Err(Refused::Symlink));
        std::fs::remove_file(&own).unwrap();

        // A parent reached through a symlink is checked where it really is.
        private_dir(&own);
        let link = base.join("state-link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        assert_eq!(
            pod_dir(&link.join(&name), &link, &name),
            Ok(Some(own.clone()))
        );
        // A parent others may write into (not sticky) is not the shim's.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            matches!(
                pod_dir(&own, &root, &name),
                Err(Refused::UntrustedParent { ref path, .. }) if *path == base
            ),
            "{:?}",
            pod_dir(&own, &root, &name)
        );
        // Sticky, like /tmp: others can't swap what the shim made.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(pod_dir(&own, &root, &name), Ok(Some(own.clone())));
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A marker written before the parents were recorded means the compiled-in dirs.
    #[test]
    fn an_older_marker_means_the_default_parents() {
        let m: PodMarker = serde_json::from_str(
            r#"{"shim_pid":1,"shim_start_time":2,"state_dir":"/s/x","ephemeral_dir":"/e/x","rootfs_cache":"/c"}"#,
        )
        .unwrap();
        let d = ShimConfig::default();
        assert_eq!(
            (m.state_root, m.ephemeral_root),
            (d.state_dir, d.ephemeral_dir)
        );
    }
}
