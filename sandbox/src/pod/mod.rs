//! A running pod: its microVM (a jailed `vpod-vmm` process, [`VmProcess`]), its
//! state directory and the front of its agent, through which every container operation goes.
//!
//! ```text
//! PodConfig ──boot──► Pod { vm, agent } ──create/start/attach/stdin/exec/...──► vpod-init
//!                      │ state dir: slot-N.img, vsock/vsock.sock, console.log, jail/
//!                      │ disk dir:  ephemeral.img (a real disk, not the tmpfs of /run)
//!                      └ Drop: stops the VM, deletes both dirs
//! ```
//!
//! - `config.rs`: what a pod boots with ([`PodConfig`]); `boot.rs`: [`Pod::boot`], stage by stage;
//! - `files.rs`: its dirs and disk files (0700 and 0600, whatever the umask: they hold what the
//!   guest writes and the socket that drives it); `slots.rs`: disk slots for later images;
//! - `agent.rs`: [`PodAgent`], every container operation, with one error type ([`PodError`]);
//!   `front.rs`: the same operations on [`Pod`];
//! - `stdio.rs` and `exec.rs`: a container's [`Stdin`] and [`Output`], an [`Exec`]'s stream.

mod agent;
mod boot;
mod config;
mod error;
mod exec;
mod files;
mod front;
mod memory;
mod slots;
mod stdio;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vpod_vmm::VmExit;

use crate::vmm_process::VmProcess;

pub use agent::{CreateOptions, PodAgent};
pub use config::{
    valid_pod_id, BootTimes, ImageDisk, PodConfig, DEFAULT_BOOT_TIMEOUT, DEFAULT_SPARE_SLOTS,
    EPHEMERAL_SERIAL,
};
pub use error::{ContainerOp, PodError};
pub use exec::{Exec, ExecControl};
pub use files::{paths, DIR_MODE, FILE_MODE};
pub use memory::{DEFAULT_HOTPLUG_MIB, GROW_TIMEOUT};
pub use stdio::{Output, OutputEvent, Stdin};

use files::remove_dir;
use slots::Slots;

/// A booted pod. Dropping it stops the VM and deletes its directories.
pub struct Pod {
    id: String,
    dir: PathBuf,
    ephemeral_dir: Option<PathBuf>,
    vm: VmProcess,
    exit: watch::Receiver<Option<VmExit>>,
    agent: PodAgent,
    slots: Slots,
    /// The pod's sysctls ([`PodConfig::sysctls`]), for each container it creates.
    sysctls: std::collections::BTreeMap<String, String>,
    /// The netns's steered loopback (a pod with a network): `kubectl port-forward`'s way in.
    forwarder: Option<crate::portforward::Forwarder>,
    /// Its memory and its containers' limits (a VM that grows).
    memory: memory::PodMemory,
    /// How long each stage of the boot took.
    pub boot_times: BootTimes,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish()
    }
}

impl Pod {
    /// The pod's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pod's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The front of the pod's agent, to hand to a task that outlives a borrow of the pod.
    pub fn containers(&self) -> &PodAgent {
        &self.agent
    }

    /// Whether the VM has ended, and how.
    pub fn vm_exit(&self) -> Option<VmExit> {
        self.exit.borrow().clone()
    }

    /// The VMM's counters (asked of its process).
    pub fn vm_metrics(&self) -> Result<vpod_vmm::VmMetrics, PodError> {
        self.vm.metrics().map_err(|source| PodError::Vm {
            id: self.id.clone(),
            source,
        })
    }

    /// The VMM process: its pid, its start report.
    pub fn vmm(&self) -> &VmProcess {
        &self.vm
    }

    /// Puts an image disk into a free slot (a container created after boot).
    pub fn attach_image(&self, img: &ImageDisk) -> Result<(), PodError> {
        self.slots.attach(&self.id, &self.vm, img)
    }

    /// Asks the guest to power off and waits for the VM to end (stopping
    /// it if the guest does not go within `timeout`); then removes the
    /// state directory.
    pub async fn shutdown(self, timeout: Duration) -> VmExit {
        self.agent.power_off(timeout).await;
        let mut rx = self.exit.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|e| e.is_some()))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|e| e.clone()));
        let exit = match waited {
            Some(e) => e,
            None => {
                self.vm.stop();
                let _ = rx.wait_for(|e| e.is_some()).await;
                VmExit::Stopped
            }
        };
        drop(self);
        exit
    }

    /// The end of a shared pod: [`Pod::shutdown`] when `pod` is its last holder, else
    /// [`Pod::stop_now`], since the other holders (volume watchers) may let go only after the
    /// caller is gone. Either way it returns once the VMM process is gone and its leftovers (jail
    /// root, cgroup) are removed, so a caller that exits next leaves nothing. Returns how the VM
    /// ended when it was shut down.
    pub async fn finish(pod: Arc<Pod>, timeout: Duration) -> Option<VmExit> {
        match Arc::try_unwrap(pod) {
            Ok(p) => Some(p.shutdown(timeout).await),
            Err(still_held) => {
                still_held.stop_now();
                // The VMM's end is reported after its cleanup; a stopped VMM that lingers is
                // killed by its supervisor within its stop grace.
                let mut rx = still_held.exit.clone();
                let bound = timeout + crate::vmm_process::STOP_GRACE + Duration::from_secs(2);
                let _ = tokio::time::timeout(bound, rx.wait_for(|e| e.is_some())).await;
                None
            }
        }
    }

    /// Stops the VM and removes the state dir now, even while other
    /// holders of the pod (watchers, waiters) still have it; what they
    /// then ask fails instead of leaking the VM. Dropping does the same.
    pub fn stop_now(&self) {
        if let Some(f) = &self.forwarder {
            f.stop();
        }
        self.vm.stop();
        remove_dir(&self.dir);
        if let Some(d) = &self.ephemeral_dir {
            remove_dir(d);
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests;
