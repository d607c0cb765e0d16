//! The pod VM's size from its containers' limits.
//!
//! Memory: the sum of the containers' memory limits plus the guest's own overhead (kernel, vpod-init,
//! page tables, page cache for the image disks). A container without a limit may use what the pod
//! has, so a pod where any container lacks one gets at least [`DEFAULT_POD_MEM_MIB`] for its
//! containers. Guest memory is mapped lazily: an idle pod costs what it touched, not its size.
//! vCPUs: the containers' CPU limits (quota/period) summed and rounded up, at least one, at most
//! the host's CPUs. A CRI pod is sized from the pod cgroup kubelet made for it (`pod_cgroup.rs`).

use oci_spec::runtime::Spec;

mod pod_cgroup;

/// Guest kernel + vpod-init + headroom for page cache; boots touch about 38 MiB (`make bench-boot`).
pub const GUEST_OVERHEAD_MIB: u64 = 64;
/// Memory for a pod's containers when some container sets no limit.
pub const DEFAULT_POD_MEM_MIB: u64 = 512;
/// The smallest guest that boots vpod-init with room for a shell.
pub const MIN_CONTAINER_MIB: u64 = 16;

const MIB: u64 = 1 << 20;

/// One container's limits (None: not set).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// The memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPUs as a fraction: quota / period.
    pub cpus: Option<f64>,
}

/// Limits a pod VM can't be sized for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizingError {
    /// A memory limit below [`MIN_CONTAINER_MIB`].
    #[error(
        "memory limit {0} bytes is below the {MIN_CONTAINER_MIB} MiB a container needs \
         (resources.limits.memory)"
    )]
    MemoryTooSmall(i64),
    /// A CPU quota with a zero period.
    #[error("cpu quota {quota} / period {period} is not a valid CPU limit (resources.limits.cpu)")]
    BadCpu {
        /// `linux.resources.cpu.quota`.
        quota: i64,
        /// `linux.resources.cpu.period`.
        period: u64,
    },
}

impl Limits {
    /// Reads `linux.resources` of a container's OCI spec (containerd puts the Kubernetes limits
    /// there). A negative memory limit or CPU quota means "unlimited" in the OCI spec.
    pub fn from_spec(spec: &Spec) -> Result<Limits, SizingError> {
        let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
            return Ok(Limits::default());
        };
        let memory_bytes = match memory_limit(spec) {
            Some(l) if l < MIN_CONTAINER_MIB * MIB => {
                return Err(SizingError::MemoryTooSmall(l as i64))
            }
            l => l,
        };
        let cpus = match res.cpu().as_ref().map(|c| (c.quota(), c.period())) {
            Some((Some(quota), period)) if quota > 0 => {
                let period = period.unwrap_or(100_000);
                if period == 0 {
                    return Err(SizingError::BadCpu { quota, period });
                }
                Some(quota as f64 / period as f64)
            }
            _ => None,
        };
        Ok(Limits { memory_bytes, cpus })
    }
}

/// The memory limit of a container's OCI spec in bytes, as given (`linux.resources.memory.limit`;
/// zero or negative is "unlimited" in the OCI spec: `None`).
pub fn memory_limit(spec: &Spec) -> Option<u64> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .and_then(|l| u64::try_from(l).ok())
        .filter(|l| *l > 0)
}

/// vCPUs and memory of one pod VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u8,
    /// Memory, the guest's overhead included.
    pub mem_mib: u32,
}

impl VmSize {
    /// Sizes a pod VM for `containers` on a host with `host_cpus` CPUs. No containers (a sandbox
    /// booted before its containers are known) get the defaults.
    pub fn for_pod(containers: &[Limits], host_cpus: usize) -> VmSize {
        let unlimited =
            containers.is_empty() || containers.iter().any(|c| c.memory_bytes.is_none());
        let limited: u64 = containers
            .iter()
            .filter_map(|c| c.memory_bytes)
            .map(|b| b.div_ceil(MIB))
            .sum();
        let mem = if unlimited {
            limited.max(DEFAULT_POD_MEM_MIB)
        } else {
            limited
        };
        let cpus: f64 = containers.iter().filter_map(|c| c.cpus).sum();
        let max_cpus = host_cpus.clamp(1, u8::MAX as usize) as u64;
        VmSize {
            vcpus: (cpus.ceil() as u64).clamp(1, max_cpus) as u8,
            mem_mib: (mem + GUEST_OVERHEAD_MIB).min(u32::MAX as u64) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resources: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}},
                "linux": {{"resources": {resources}}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn limits_come_from_the_oci_resources() {
        let l = Limits::from_spec(&spec(
            r#"{"memory": {"limit": 268435456}, "cpu": {"quota": 150000, "period": 100000}}"#,
        ))
        .unwrap();
        assert_eq!(l.memory_bytes, Some(256 * MIB));
        assert_eq!(l.cpus, Some(1.5));
        let none = Limits::from_spec(&spec(r#"{"memory": {"limit": -1}, "cpu": {"quota": -1}}"#));
        assert_eq!(none.unwrap(), Limits::default());
    }

    #[test]
    fn bad_limits_are_clear_errors() {
        let e = Limits::from_spec(&spec(r#"{"memory": {"limit": 4096}}"#)).unwrap_err();
        assert!(e.to_string().contains("resources.limits.memory"), "{e}");
        let e = Limits::from_spec(&spec(r#"{"cpu": {"quota": 5, "period": 0}}"#)).unwrap_err();
        assert!(matches!(e, SizingError::BadCpu { .. }));
    }

    #[test]
    fn the_vm_is_the_sum_of_its_containers_plus_overhead() {
        let a = Limits {
            memory_bytes: Some(128 * MIB),
            cpus: Some(0.5),
        };
        let b = Limits {
            memory_bytes: Some(64 * MIB + 1),
            cpus: Some(1.2),
        };
        let s = VmSize::for_pod(&[a, b], 8);
        assert_eq!(s.mem_mib as u64, 128 + 65 + GUEST_OVERHEAD_MIB);
        assert_eq!(s.vcpus, 2);
        // Capped at the host's CPUs; an unlimited container gets the default memory.
        let s = VmSize::for_pod(&[b, Limits::default(), b], 2);
        assert_eq!(s.vcpus, 2);
        assert_eq!(s.mem_mib as u64, DEFAULT_POD_MEM_MIB + GUEST_OVERHEAD_MIB);
        assert_eq!(
            VmSize::for_pod(&[], 4),
            VmSize {
                vcpus: 1,
                mem_mib: (DEFAULT_POD_MEM_MIB + GUEST_OVERHEAD_MIB) as u32
            }
        );
    }
}
