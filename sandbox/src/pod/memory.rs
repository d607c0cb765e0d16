//! A pod VM's memory as its containers come and go: booted at what the pod's limits said then
//! (kubelet's pod cgroup, or the default), grown by virtio-mem when a container created later
//! needs more: the containers' memory limits plus the guest's own overhead. Growth is plugged
//! memory the guest onlines before the container is created, so the container's limit is real.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::PodError;
use super::Pod;
use crate::sizing::GUEST_OVERHEAD_MIB;

/// Memory a pod VM may grow by unless configured ([`super::PodConfig::hotplug_mib`]): the region
/// costs address space only until the guest plugs it.
pub const DEFAULT_HOTPLUG_MIB: u32 = 8192;
/// How long the guest gets to plug what was asked (a block is 2 MiB; Linux plugs and onlines
/// hundreds a second on real KVM).
pub const GROW_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
const MIB: u64 = 1 << 20;

/// What the pod's VM holds and what its containers' limits add up to.
#[derive(Debug)]
pub(super) struct PodMemory {
    /// RAM the VM booted with.
    boot_mib: u32,
    /// How far it may grow beyond that.
    hotplug_mib: u32,
    /// Each container's memory limit (containers without one are bounded by the VM).
    limits: Mutex<HashMap<String, u64>>,
}

impl PodMemory {
    pub(super) fn new(boot_mib: u32, hotplug_mib: u32) -> Self {
        Self {
            boot_mib,
            hotplug_mib,
            limits: Mutex::default(),
        }
    }

    /// The VM size (MiB) the containers need with `id` at `limit` bytes.
    fn need_with(&self, id: &str, limit: Option<u64>) -> u64 {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        match limit {
            Some(l) => limits.insert(id.to_owned(), l),
            None => limits.remove(id),
        };
        let sum: u64 = limits.values().map(|b| b.div_ceil(MIB)).sum();
        sum + GUEST_OVERHEAD_MIB
    }
}

impl Pod {
    /// Makes room for container `id` with a memory limit of `limit` bytes (none: nothing to
    /// reserve): when the pod's containers' limits and the guest's overhead add up to more than
    /// the VM has, it asks the guest to plug the difference and waits until it has.
    pub(super) async fn reserve_memory(
        &self,
        id: &str,
        limit: Option<u64>,
    ) -> Result<(), PodError> {
        let need = self.memory.need_with(id, limit);
        let boot = u64::from(self.memory.boot_mib);
        if need <= boot {
            return Ok(());
        }
        let err = |why: String| PodError::Grow {
            id: self.id.clone(),
            container: id.to_owned(),
            need_mib: need,
            why,
        };
        let max = boot + u64::from(self.memory.hotplug_mib);
        if need > max {
            return Err(err(format!(
                "the VM grows to at most {max} MiB (boot {boot} MiB + hotplug_memory_mib {})",
                self.memory.hotplug_mib
            )));
        }
        let vm_err = |e: crate::vmm_process::VmProcessError| err(e.to_string());
        let state = self.vm.hotplug().map_err(vm_err)?;
        let want = (need - boot) * MIB;
        if state.requested_bytes >= want && state.plugged_bytes >= want {
            return Ok(());
        }
        if state.requested_bytes < want {
            self.vm.request_hotplug(want).map_err(vm_err)?;
        }
        let t0 = Instant::now();
        loop {
            let state = self.vm.hotplug().map_err(vm_err)?;
            if state.plugged_bytes >= want {
                tracing::info!(
                    "pod {}: grew to {} MiB for container {id} in {:?}",
                    self.id,
                    boot + state.plugged_bytes / MIB,
                    t0.elapsed()
                );
                return Ok(());
            }
            if t0.elapsed() > GROW_TIMEOUT {
                return Err(err(format!(
                    "the guest plugged {} of {} MiB within {GROW_TIMEOUT:?}",
                    state.plugged_bytes / MIB,
                    want / MIB
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Container `id` is gone: its limit no longer counts (the VM keeps its size).
    pub(super) fn release_memory(&self, id: &str) {
        self.memory.need_with(id, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_need_is_the_limits_plus_the_overhead() {
        let m = PodMemory::new(576, 1024);
        assert_eq!(m.need_with("a", Some(256 * MIB)), 256 + GUEST_OVERHEAD_MIB);
        assert_eq!(m.need_with("b", Some(MIB + 1)), 258 + GUEST_OVERHEAD_MIB);
        assert_eq!(m.need_with("a", None), 2 + GUEST_OVERHEAD_MIB, "a gone");
        assert_eq!(m.need_with("c", None), 2 + GUEST_OVERHEAD_MIB, "no limit");
    }
}
