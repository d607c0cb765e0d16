//! How a pod's VMM process is started and jailed: the shim's `[vmm]` TOML table, `vpod run`'s
//! `--vmm-*` flags. The defaults work on a stock Debian host as root.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vpod_jail::ids::IdRange;
use vpod_vmm::control::SeccompMode;

/// The binary's name, looked up next to the running program and then on `PATH`.
pub const VMM_BINARY: &str = "vpod-vmm";
/// Where the uid leases live unless configured (a tmpfs: leases die with the node's boot).
pub const DEFAULT_LEASE_DIR: &str = "/run/vpod/uids";
/// The cgroup every pod's VMM cgroup goes under unless configured.
pub const DEFAULT_CGROUP_PARENT: &str = "vpod";
/// Memory a VMM process may use beyond its guest's RAM before its cgroup's `memory.max` stops
/// it: its own RSS (measured well under 4 MiB, `make bench-boot`), page tables and KVM's
/// per-VM kernel memory charged to the cgroup, with room to spare.
pub const DEFAULT_MEMORY_OVERHEAD_MIB: u64 = 64;
/// Tasks (threads) beyond the vCPUs: main, event loop, signals, waiter thread and the jail's
/// waiter process, with room to spare.
pub const PIDS_BEYOND_VCPUS: u64 = 16;

/// The VMM process's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmmProcessConfig {
    /// The `vpod-vmm` binary (`None`: next to the running program, else on `PATH`).
    pub binary: Option<PathBuf>,
    /// Jail the VMM (namespaces, empty root, its own uid, no capabilities, cgroup). Off only to
    /// debug a host where the jail can't work; the VMM is still its own process.
    pub jail: bool,
    /// The uids (= gids) the VMMs run as, one per pod.
    pub uid_range: IdRange,
    /// Where the uid leases are kept.
    pub lease_dir: PathBuf,
    /// The parent cgroup (relative to the cgroup mount), `None`: no cgroup of its own.
    pub cgroup_parent: Option<PathBuf>,
    /// Directory the per-pod jail roots go in (`<dir>/<pod id>`); `None`: in the pod's state
    /// directory, so they go with it.
    pub jail_root: Option<PathBuf>,
    /// What a syscall off a thread's list does (`enforce`; `log` for test beds).
    pub seccomp: SeccompMode,
    /// Memory allowed beyond the guest's in the cgroup, MiB.
    pub memory_overhead_mib: u64,
}

impl Default for VmmProcessConfig {
    fn default() -> Self {
        Self {
            binary: None,
            jail: true,
            uid_range: IdRange::default(),
            lease_dir: DEFAULT_LEASE_DIR.into(),
            cgroup_parent: Some(DEFAULT_CGROUP_PARENT.into()),
            jail_root: None,
            seccomp: SeccompMode::Enforce,
            memory_overhead_mib: DEFAULT_MEMORY_OVERHEAD_MIB,
        }
    }
}

impl VmmProcessConfig {
    /// The binary to start: the configured one, or `vpod-vmm` beside the running program (or one
    /// directory up, where cargo puts binaries beside `deps/` test programs), else `PATH`'s.
    pub fn binary(&self) -> PathBuf {
        if let Some(b) = &self.binary {
            return b.clone();
        }
        if let Ok(exe) = std::env::current_exe() {
            let dirs = exe
                .parent()
                .into_iter()
                .chain(exe.parent().and_then(Path::parent));
            for dir in dirs {
                let candidate = dir.join(VMM_BINARY);
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
        PathBuf::from(VMM_BINARY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_toml_names() {
        let d = VmmProcessConfig::default();
        assert!(d.jail);
        assert_eq!(d.seccomp, SeccompMode::Enforce);
        let j = serde_json::json!({"seccomp": "log", "cgroup_parent": null,
            "uid_range": {"first": 200000, "count": 10}});
        let c: VmmProcessConfig = serde_json::from_value(j).unwrap();
        assert_eq!(c.seccomp, SeccompMode::Log);
        assert_eq!(c.cgroup_parent, None);
        assert_eq!(c.uid_range.first, 200000);
        assert!(c.jail);
        assert!(
            serde_json::from_value::<VmmProcessConfig>(serde_json::json!({"jial": false})).is_err()
        );
    }
}
