//! The pod marker: what a shim leaves in each task's bundle so that
//! containerd's `delete` after a crash finds the dead shim's pod dirs, and
//! the cleanup it does.
//!
//! The marker is only a hint: `delete` removes a dir it names only when the
//! dir is one the shim made for this very task ([`pod_dir`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// The parent of the pod's VMM cgroup, `<cgroup mount>/<this>/<pod id>` (`[vmm]
    /// cgroup_parent` of a jailing shim); `None`: no cgroup made, or a shim that ran its VMM in
    /// its own process.
    #[serde(default)]
    pub vmm_cgroup_parent: Option<PathBuf>,
    /// Where the pod's jail root `<this>/<pod id>` is (`[vmm] jail_root` of a jailing shim);
    /// `None`: in the state dir, or no jail.
    #[serde(default)]
    pub vmm_jail_root: Option<PathBuf>,
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
            vmm_cgroup_parent: cfg.vmm.cgroup_parent.clone().filter(|_| cfg.vmm.jail),
            vmm_jail_root: cfg.vmm.jail_root.clone().filter(|_| cfg.vmm.jail),
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
    #[error("rmdir: {0}")]
    Rmdir(String),
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

/// Where the sandbox makes the VMMs' cgroups (`vpod_sandbox::vmm_process`).
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// How long `delete` waits for a left VMM, killed through `cgroup.kill`, to leave its cgroup.
const CGROUP_EMPTY_TIMEOUT: Duration = Duration::from_secs(2);

/// `delete` after the shim died: removes the pod's VMM cgroup, state and
/// ephemeral dirs, its jail root when it was elsewhere, and the shim's
/// half-built rootfs disks, unless the shim still runs. `bundle` is the
/// task's bundle, which containerd names after the task id; the task is in
/// `namespace`. Only what [`pod_dir`] finds to be this pod's is removed;
/// anything else the marker names is left and logged. The cgroup and the jail
/// root go only at the delete of the pod's own task (the one whose id the pod
/// id is made of, [`pod_id`]), whose bundle names them.
///
/// The VMM process itself dies with the shim (the parent-death signals of the
/// jail's waiter and of the VMM; the VMM also ends when its control channel
/// closes); a VMM still in its cgroup whose process tree has no live owner
/// ([`orphaned`]) is killed through `cgroup.kill` (cgroup v2). The tap it
/// opened in the pod's netns (CNI's, removed by CNI) was not persistent: it
/// went away when its last fd closed; its uid lease is a lock that ended with
/// it. The marker itself stays: containerd removes the bundle.
pub fn clean_after_dead_shim(bundle: &Path, namespace: &str) -> Cleanup {
    clean_after_dead_shim_in(bundle, namespace, Path::new(CGROUP_MOUNT))
}

/// [`clean_after_dead_shim`] with the VMM cgroups under `cgroup_mount`.
fn clean_after_dead_shim_in(bundle: &Path, namespace: &str, cgroup_mount: &Path) -> Cleanup {
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
    // This bundle is the pod's own task's: the VMM's cgroup first (a VMM still there holds the
    // pod's files open), its jail root if outside the state dir.
    let pod = pod_id(id);
    if m.state_dir == m.state_root.join(&name) && !pod.is_empty() {
        if let Some(parent) = &m.vmm_cgroup_parent {
            match remove_vmm_cgroup(cgroup_mount, parent, &pod) {
                Ok(dirs) => removed.extend(dirs),
                Err(why) => log::warn!("delete: the VMM cgroup of pod {pod} left: {why}"),
            }
        }
        if let Some(root) = &m.vmm_jail_root {
            match remove_jail_root(root, &pod) {
                Ok(Some(d)) => removed.push(d),
                Ok(None) => {}
                Err(why) => log::warn!("delete: {} left alone: {why}", root.join(&pod).display()),
            }
        }
    }
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

/// Removes the VMM cgroup of `pod` under `parent` (relative, no `..`) in the hierarchy mounted
/// at `mount` (each controller's on v1); returns the dirs removed. A cgroup still holding
/// processes is emptied through `cgroup.kill` (v2) only when they are [`orphaned`]; otherwise
/// (v1, a live owner: another pod of the same id) it is left and the error says why.
pub fn remove_vmm_cgroup(mount: &Path, parent: &Path, pod: &str) -> Result<Vec<PathBuf>, String> {
    use std::path::Component;
    let below = parent
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    let one = Path::new(pod).components().count() == 1
        && matches!(
            Path::new(pod).components().next(),
            Some(Component::Normal(_))
        );
    if !below || !one {
        return Err(format!(
            "parent {} or name {pod:?} is not below the cgroup mount",
            parent.display()
        ));
    }
    let spec = vpod_jail::CgroupSpec {
        root: mount.into(),
        parent: parent.into(),
        name: pod.into(),
        memory_max: None,
        pids_max: None,
        version: None,
    };
    let mut removed = Vec::new();
    for dir in vpod_jail::cgroup_dirs(&spec).map_err(|e| e.to_string())? {
        if remove_cgroup_dir(&dir).map_err(|why| format!("{}: {why}", dir.display()))? {
            removed.push(dir);
        }
    }
    Ok(removed)
}

/// `rmdir` of one cgroup dir (`false`: there was none), killing its orphaned processes first.
fn remove_cgroup_dir(dir: &Path) -> Result<bool, String> {
    let deadline = Instant::now() + CGROUP_EMPTY_TIMEOUT;
    let mut killed = false;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && !killed => {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
                    .map_err(|r| format!("rmdir: {e}; cgroup.procs: {r}"))?;
                let pids: Vec<u32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                if pids.is_empty() {
                    // Busy with cgroups below it, which the VMM can't make: not the VMM's.
                    return Err(format!("rmdir: {e}, with no process of its own in it"));
                }
                if let Some(owned) = pids.iter().find(|&&p| !orphaned(p)) {
                    return Err(format!(
                        "process {owned} in it has a live owner (another pod of this id?)"
                    ));
                }
                let kill = dir.join("cgroup.kill");
                if !kill.exists() {
                    return Err(format!(
                        "processes {pids:?} left in it and no cgroup.kill (cgroup v1)"
                    ));
                }
                std::fs::write(&kill, "1").map_err(|k| format!("cgroup.kill: {k}"))?;
                killed = true;
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("rmdir: {e}")),
        }
    }
}

/// The parent of `pid` (`/proc/PID/stat` field 4), if it exists.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether `pid`, a process in a VMM cgroup, is left over from a dead owner: it or its parent
/// (the jail's waiter) was handed to init. A live pod's VMM has its waiter's owner (a shim, a
/// `vpod` supervisor) between it and init; so does a VMM orphaned under a subreaper, which is
/// then left alone too. A process gone already counts as orphaned (nothing to spare).
pub fn orphaned(pid: u32) -> bool {
    match parent_pid(pid) {
        None | Some(0) | Some(1) => true,
        Some(waiter) => matches!(parent_pid(waiter), None | Some(0) | Some(1)),
    }
}

/// Removes the empty jail root `<root>/<pod>` (a mount point on the host; the jail's tmpfs
/// lived in the VMM's mount namespace) when `root` is a trusted chain ([`trusted_chain`]);
/// `None` when it is gone already.
fn remove_jail_root(root: &Path, pod: &str) -> Result<Option<PathBuf>, Refused> {
    if !plain(&root.join(pod)) || Path::new(pod).components().count() != 1 {
        return Err(Refused::NotPlain);
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
    let dir = root.join(pod);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_symlink() => return Err(Refused::Symlink),
        Ok(m) if !m.is_dir() => return Err(Refused::NotDir),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Refused::Stat(e.to_string())),
    }
    // rmdir: only an empty dir goes.
    match std::fs::remove_dir(&dir) {
        Ok(()) => Ok(Some(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Refused::Rmdir(e.to_string())),
    }
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
        // Its shim ran the VMM in its own process: no cgroup, no jail root.
        assert_eq!((m.vmm_cgroup_parent, m.vmm_jail_root), (None, None));
    }

    /// A stand-in cgroup v2 mount (`cgroup.controllers` at its root) under `base`.
    fn fake_v2(base: &Path) -> PathBuf {
        let mount = base.join("cgroup");
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::write(mount.join("cgroup.controllers"), "memory pids\n").unwrap();
        mount
    }

    /// The VMM cgroup `<parent>/<pod>` goes, on v2 and on v1 (one per controller); missing is
    /// no error; a parent or name that leaves the mount, or no cgroup fs, is refused.
    #[test]
    fn the_vmm_cgroup_is_removed() {
        let base = std::env::temp_dir().join(format!("vpod-shim-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mount = fake_v2(&base);
        let parent = Path::new("vpod/pods");
        assert_eq!(remove_vmm_cgroup(&mount, parent, "p1"), Ok(Vec::new()));
        let dir = mount.join("vpod/pods/p1");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            remove_vmm_cgroup(&mount, parent, "p1"),
            Ok(vec![dir.clone()])
        );
        assert!(!dir.exists() && mount.join("vpod/pods").exists());
        // Not empty (a stand-in's file; a real cgroup is EBUSY with processes): an error naming it.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x"), "").unwrap();
        let e = remove_vmm_cgroup(&mount, parent, "p1").unwrap_err();
        assert!(e.contains("p1") && e.contains("rmdir"), "{e}");
        for (parent, pod) in [
            ("../vpod", "p1"),
            ("/sys/fs/cgroup", "p1"),
            ("vpod", "a/b"),
            ("vpod", ".."),
            ("vpod", ""),
        ] {
            let e = remove_vmm_cgroup(&mount, Path::new(parent), pod).unwrap_err();
            assert!(e.contains("not below"), "{parent} {pod}: {e}");
        }

        let v1 = base.join("v1");
        for c in ["memory", "pids"] {
            std::fs::create_dir_all(v1.join(c).join("vpod/p2")).unwrap();
            std::fs::write(v1.join(c).join("cgroup.procs"), "").unwrap();
        }
        assert_eq!(
            remove_vmm_cgroup(&v1, Path::new("vpod"), "p2"),
            Ok(vec![v1.join("memory/vpod/p2"), v1.join("pids/vpod/p2")])
        );
        let none = base.join("none");
        std::fs::create_dir_all(&none).unwrap();
        let e = remove_vmm_cgroup(&none, Path::new("vpod"), "p2").unwrap_err();
        assert!(e.contains(none.to_str().unwrap()), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A process whose owner lives is not orphaned; one handed to init, or gone, is.
    #[test]
    fn only_processes_without_a_live_owner_are_orphaned() {
        // sleep (the "VMM") under sh (the "waiter") under this process (the "shim").
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let sleep: u32 = line.trim().parse().unwrap();
        assert_eq!(parent_pid(sleep), Some(sh.id()));
        assert!(!orphaned(sleep));
        assert!(!orphaned(sh.id()));
        // SAFETY: kill takes plain integers; `sleep` is sh's child, not yet reaped.
        unsafe { libc::kill(sleep as libc::pid_t, libc::SIGKILL) };
        sh.wait().unwrap();
        // Reaped: gone.
        assert!(orphaned(sleep));
        // The ancestor of this process that init adopted (or started) is.
        let mut a = std::process::id();
        while let Some(p) = parent_pid(a).filter(|&p| p > 1) {
            a = p;
        }
        assert!(orphaned(a), "{a}");
    }

    /// `delete` of the pod's own task removes its VMM cgroup and outside jail root; that of
    /// another task of the pod (whose bundle holds the same marker) leaves them.
    #[test]
    fn delete_removes_the_dead_pods_vmm_cgroup_and_jail_root() {
        let base = std::env::temp_dir().join(format!("vpod-shim-vmmclean-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mount = fake_v2(&base);
        let cfg = ShimConfig {
            state_dir: base.join("state"),
            ephemeral_dir: base.join("ephemeral"),
            rootfs_cache: base.join("rootfs"),
            vmm: vpod_sandbox::VmmProcessConfig {
                jail_root: Some(base.join("jails")),
                ..Default::default()
            },
            ..ShimConfig::default()
        };
        let id = "Sandbox-0123456789abcdef";
        let pod = pod_id(id);
        let mut m = PodMarker::for_pod(&cfg, "k8s.io", id);
        assert_eq!(m.vmm_cgroup_parent, Some(PathBuf::from("vpod")));
        assert_eq!(m.vmm_jail_root, Some(base.join("jails")));
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        m.shim_pid = dead.id();
        dead.wait().unwrap();
        let cgroup = mount.join("vpod").join(&pod);
        let jail = base.join("jails").join(&pod);
        for d in [&cgroup, &jail] {
            private_dir(d);
        }

        // Another task's bundle: the pod's VMM pieces stay.
        let other = base.join("bundles/c1");
        private_dir(&other);
        m.write(&other).unwrap();
        assert_eq!(
            clean_after_dead_shim_in(&other, "k8s.io", &mount),
            Cleanup::Cleaned(Vec::new())
        );
        assert!(cgroup.exists() && jail.exists());

        let own = base.join("bundles").join(id);
        private_dir(&own);
        m.write(&own).unwrap();
        assert_eq!(
            clean_after_dead_shim_in(&own, "k8s.io", &mount),
            Cleanup::Cleaned(vec![cgroup.clone(), jail.clone()])
        );
        assert!(!cgroup.exists() && !jail.exists());
        // A jail root that isn't empty is left (only an empty mount point goes).
        private_dir(&jail);
        std::fs::write(jail.join("f"), "").unwrap();
        assert!(matches!(
            remove_jail_root(&base.join("jails"), &pod),
            Err(Refused::Rmdir(_))
        ));
        // Unjailed or without a cgroup: the marker names none.
        let m = PodMarker::for_pod(
            &ShimConfig {
                vmm: vpod_sandbox::VmmProcessConfig {
                    jail: false,
                    ..cfg.vmm.clone()
                },
                ..cfg.clone()
            },
            "k8s.io",
            id,
        );
        assert_eq!((m.vmm_cgroup_parent, m.vmm_jail_root), (None, None));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
