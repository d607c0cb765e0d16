//! What a jail is made of: the [`JailSpec`] the host builds and the VMM hands to
//! [`crate::enter`]. It is plain data (serde), so the host can pass it to the VMM binary as JSON.

use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::JailError;

/// Everything [`crate::enter`] needs to jail the calling process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSpec {
    /// Host directory that becomes the jail's `/`: a fresh tmpfs is mounted on it in the VMM's own
    /// mount namespace. Created with mode 0700 if missing; must be empty if present.
    pub root: PathBuf,
    /// What the root holds, and nothing else: each entry a bind mount of a host path.
    pub binds: Vec<Bind>,
    /// Mount a /proc of the jail's PID namespace at `/proc`. The VMM needs none: off by default.
    #[serde(default)]
    pub mount_proc: bool,
    /// Expect a new PID namespace, made by [`crate::spawn`]: the jailed process must be its PID 1
    /// (checked; if it dies, the kernel kills everything else in it).
    #[serde(default = "yes")]
    pub new_pid_ns: bool,
    /// The unprivileged uid the process ends as (not 0). See [`crate::ids`] for one per pod.
    pub uid: u32,
    /// The unprivileged gid the process ends as (not 0); supplementary groups are cleared.
    pub gid: u32,
    /// Hostname in the jail's own UTS namespace.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// The pod's cgroup, joined before anything is allocated (so the guest's RAM is charged there).
    #[serde(default)]
    pub cgroup: Option<CgroupSpec>,
    /// A network namespace to join (e.g. `/var/run/netns/<pod>` or `/proc/<pid>/ns/net`), opened
    /// while the host's tree is still visible.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Resource limits of the jailed process.
    #[serde(default)]
    pub rlimits: Rlimits,
    /// File descriptors the jailed process keeps; every other one is closed. 0, 1 and 2 are not
    /// implied: list them if the VMM is to keep its stdio.
    #[serde(default = "default_keep_fds")]
    pub keep_fds: Vec<RawFd>,
    /// File descriptors only the waiter (the parent left outside the PID namespace) keeps, and
    /// the jailed process closes: e.g. the uid lease of [`crate::ids`], so the VMM can't free it.
    #[serde(default)]
    pub waiter_fds: Vec<RawFd>,
    /// Size of the root tmpfs in bytes. It holds only mount points (read-only once built).
    #[serde(default = "default_root_size")]
    pub root_size: u64,
}

/// A host path made visible in the jail: a file or directory is bind-mounted (nosuid, nodev,
/// noexec); a device is re-created as a node of the same number owned by the jail's uid/gid
/// (so `/dev/kvm` opens for the unprivileged VMM whatever the host node's mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Absolute host path: a file, a directory or a character device.
    pub host: PathBuf,
    /// Relative path inside the jail root (e.g. `dev/kvm`); parent directories are created.
    pub name: PathBuf,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

impl Bind {
    /// `host` at `name`, read-only.
    pub fn ro(host: impl Into<PathBuf>, name: impl Into<PathBuf>) -> Self {
        Self {
            host: host.into(),
            name: name.into(),
            read_only: true,
        }
    }

    /// `host` at `name`, read-write.
    pub fn rw(host: impl Into<PathBuf>, name: impl Into<PathBuf>) -> Self {
        Self {
            host: host.into(),
            name: name.into(),
            read_only: false,
        }
    }

    /// `/dev/kvm` at `dev/kvm`.
    pub fn kvm() -> Self {
        Self::rw("/dev/kvm", "dev/kvm")
    }

    /// `/dev/net/tun` at `dev/net/tun`, for a VMM that opens its tap itself.
    pub fn tun() -> Self {
        Self::rw("/dev/net/tun", "dev/net/tun")
    }
}

/// Which cgroup hierarchy to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// The unified hierarchy: `<root>/<parent>/<name>`.
    V2,
    /// Per-controller hierarchies (hybrid hosts): `<root>/{memory,pids}/<parent>/<name>`.
    V1,
}

/// The pod's own cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// Where cgroups are mounted (`/sys/fs/cgroup`).
    #[serde(default = "default_cgroup_root")]
    pub root: PathBuf,
    /// Relative path of the parent cgroup (e.g. `vpod`), created if missing.
    pub parent: PathBuf,
    /// The pod's cgroup under the parent (one path component).
    pub name: String,
    /// `memory.max` (v2) / `memory.limit_in_bytes` (v1) in bytes; `None` leaves it unlimited.
    #[serde(default)]
    pub memory_max: Option<u64>,
    /// `pids.max`; `None` leaves it unlimited.
    #[serde(default)]
    pub pids_max: Option<u64>,
    /// `None`: v2 if `<root>` is a unified hierarchy, else v1.
    #[serde(default)]
    pub version: Option<CgroupVersion>,
}

/// Resource limits (soft = hard, so the VMM can't raise them). `RLIMIT_CORE` is always 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE`: one more than the highest fd number the VMM may open.
    pub nofile: u64,
    /// `RLIMIT_FSIZE` in bytes; `None` is unlimited. It bounds writes at any offset of a regular
    /// file, so it must be at least the size of the largest writable disk image.
    pub fsize: Option<u64>,
    /// `RLIMIT_NPROC`: tasks (threads count) of the jail's uid, the waiter included; one uid per
    /// pod makes it a per-pod bound. At least vCPUs + 4.
    pub nproc: u64,
}

impl Default for Rlimits {
    fn default() -> Self {
        Self {
            nofile: 2048,
            fsize: None,
            nproc: 512,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_hostname() -> String {
    "vpod".into()
}

fn default_keep_fds() -> Vec<RawFd> {
    vec![0, 1, 2]
}

fn default_root_size() -> u64 {
    1 << 20
}

fn default_cgroup_root() -> PathBuf {
    "/sys/fs/cgroup".into()
}

impl JailSpec {
    /// A spec with the defaults: no binds, no cgroup, no netns, stdio kept.
    pub fn new(root: impl Into<PathBuf>, uid: u32, gid: u32) -> Self {
        Self {
            root: root.into(),
            binds: Vec::new(),
            mount_proc: false,
            new_pid_ns: true,
            uid,
            gid,
            hostname: default_hostname(),
            cgroup: None,
            netns: None,
            rlimits: Rlimits::default(),
            keep_fds: default_keep_fds(),
            waiter_fds: Vec::new(),
            root_size: default_root_size(),
        }
    }

    /// Checks what can be checked before anything is changed.
    pub fn validate(&self) -> Result<(), JailError> {
        let invalid = |what: String| Err(JailError::InvalidSpec(what));
        if self.uid == 0 || self.gid == 0 {
            return invalid(format!(
                "uid {} / gid {}: the jail drops root, 0 is not allowed",
                self.uid, self.gid
            ));
        }
        if !self.root.is_absolute() || !is_plain(&self.root) {
            return invalid(format!(
                "root {}: must be absolute, without . or ..",
                self.root.display()
            ));
        }
        for b in &self.binds {
            if !b.host.is_absolute() {
                return invalid(format!("bind host {}: must be absolute", b.host.display()));
            }
            if b.name.is_absolute() || !is_plain(&b.name) || b.name.as_os_str().is_empty() {
                return invalid(format!(
                    "bind name {}: must be relative, without . or ..",
                    b.name.display()
                ));
            }
            if self.mount_proc && b.name.starts_with("proc") {
                return invalid(format!("bind name {}: /proc is taken", b.name.display()));
            }
        }
        if let Some(cg) = &self.cgroup {
            if cg.parent.is_absolute() || !is_plain(&cg.parent) {
                return invalid(format!(
                    "cgroup parent {}: must be relative, without . or ..",
                    cg.parent.display()
                ));
            }
            if cg.name.is_empty() || cg.name.contains('/') || cg.name.starts_with('.') {
                return invalid(format!(
                    "cgroup name {:?}: one plain path component",
                    cg.name
                ));
            }
        }
        if self.hostname.len() > 64 {
            return invalid(format!(
                "hostname {:?}: longer than 64 bytes",
                self.hostname
            ));
        }
        if self
            .keep_fds
            .iter()
            .chain(&self.waiter_fds)
            .any(|fd| *fd < 0)
        {
            return invalid("negative fd in keep_fds / waiter_fds".into());
        }
        Ok(())
    }
}

/// No `.`/`..` components: every path the jail touches is spelled out.
fn is_plain(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::RootDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = JailSpec::new("/run/vpod/jail/a", 1000, 1000);
        assert!(ok.validate().is_ok());
        assert!(JailSpec::new("/j", 0, 1000).validate().is_err());
        assert!(JailSpec::new("relative", 1, 1).validate().is_err());
        assert!(JailSpec::new("/a/../b", 1, 1).validate().is_err());
        let mut s = ok.clone();
        s.binds.push(Bind::ro("/k", "../k"));
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.binds.push(Bind::ro("k", "k"));
        assert!(s.validate().is_err());
        let mut s = ok.clone();
        s.binds.push(Bind::kvm());
        s.cgroup = Some(CgroupSpec {
            root: default_cgroup_root(),
            parent: "vpod".into(),
            name: "a/b".into(),
            memory_max: None,
            pids_max: None,
            version: None,
        });
        assert!(s.validate().is_err());
    }

    #[test]
    fn json_defaults() {
        let s: JailSpec =
            serde_json::from_str(r#"{"root":"/j","binds":[],"uid":5,"gid":6}"#).unwrap();
        assert_eq!(s, JailSpec::new("/j", 5, 6));
        let back: JailSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
