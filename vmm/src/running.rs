//! A VM once it runs: its threads and how they are torn down (`Running`), and the handle the
//! embedder holds ([`RunningVm`]: wait, stop, metrics, disk swaps). [`crate::Vmm`] makes one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::devices::virtio::block::{Block, BlockError, DiskFile};
use crate::devices::virtio::mem::{Mem, MemError};
use crate::devices::virtio::transport::MmioTransport;
use crate::devices::virtio::GuestMemory;
use crate::event_loop::EventLoop;
use crate::exit::{ExitEvent, ExitSignal, VmExit};
use crate::metrics::{VmCounters, VmMetrics};
use crate::vstate::vcpu::VcpuHandle;
use crate::vstate::vm::Vm;

/// A virtio-blk slot, for swapping its backing file at runtime.
pub(crate) struct DiskSlot {
    pub block: Arc<Mutex<Block>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// The virtio-mem device, for the host's requests to grow or shrink the guest.
pub(crate) struct MemSlot {
    pub mem: Arc<Mutex<Mem>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// The devices the host acts on while the VM runs.
pub(crate) struct Devices {
    pub disks: Vec<DiskSlot>,
    pub memory: Option<MemSlot>,
}

/// The threads and fds of a running VM; torn down once.
pub(crate) struct Running {
    pub vcpus: Vec<VcpuHandle>,
    pub event_loop: EventLoop,
    pub stop: Arc<AtomicBool>,
    pub vm: Vm,
}

/// How long teardown waits for the VM's threads, whatever the guest did.
pub const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Running {
    /// Stops vCPUs (signal + immediate_exit, re-kicked until they are out) and the event loop,
    /// joins every thread that finished by the deadline ([`TEARDOWN_TIMEOUT`]) and detaches the
    /// others (logged, returned as an error count): it never blocks longer than that.
    pub fn teardown(mut self) -> Result<(), usize> {
        self.stop.store(true, Ordering::SeqCst);
        // The event loop is told first: a vCPU may be waiting for a device lock it holds.
        self.event_loop.request_stop();
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        while self.vcpus.iter().any(|v| !v.is_finished()) && Instant::now() < deadline {
            for v in &self.vcpus {
                v.kick();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut stuck = 0;
        for v in self.vcpus.drain(..) {
            if v.is_finished() {
                v.join();
            } else {
                tracing::error!("a vCPU thread did not stop; leaking it");
                stuck += 1;
            }
        }
        // At least a moment for the event loop even if the vCPUs used up the deadline.
        let loop_deadline = deadline.max(Instant::now() + Duration::from_millis(100));
        if self.event_loop.join_until(loop_deadline).is_err() {
            stuck += 1;
        }
        // VM fd, vCPU fds (closed by their threads) and memory go with `self`.
        drop(self.vm);
        if stuck == 0 {
            Ok(())
        } else {
            Err(stuck)
        }
    }
}

/// Why an operation on a running VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmOpError {
    /// The VM has fewer disk slots than the index given.
    #[error("no disk slot {0}")]
    NoSuchDisk(usize),
    /// Opening the new backing file.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// Telling the guest about the new capacity.
    #[error("raising the config interrupt: {0}")]
    Interrupt(#[source] std::io::Error),
    /// The VM was built without room to grow (`hotplug_mib` 0).
    #[error("the VM has no hotplug memory (built with hotplug_mib 0)")]
    NoHotplug,
    /// More than the hotplug region holds.
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// The guest's memory beyond its boot RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct HotplugState {
    /// Bytes the region holds (0: no hotplug memory).
    pub region_bytes: u64,
    /// Bytes the host asked the guest to plug.
    pub requested_bytes: u64,
    /// Bytes the guest has plugged.
    pub plugged_bytes: u64,
}

/// A running VM. `stop` and `wait` may be called from different threads (share it in an `Arc`).
pub struct RunningVm {
    running: Mutex<Option<Running>>,
    outcome: Mutex<Option<VmExit>>,
    exit: Arc<ExitSignal>,
    counters: Arc<VmCounters>,
    disks: Vec<DiskSlot>,
    memory: Option<MemSlot>,
    _mem: GuestMemory,
}

impl RunningVm {
    pub(crate) fn new(
        running: Running,
        exit: Arc<ExitSignal>,
        counters: Arc<VmCounters>,
        devices: Devices,
        mem: GuestMemory,
    ) -> Self {
        Self {
            running: Mutex::new(Some(running)),
            outcome: Mutex::new(None),
            exit,
            counters,
            disks: devices.disks,
            memory: devices.memory,
            _mem: mem,
        }
    }

    /// Blocks until the guest ends (or [`stop`](Self::stop) is called), tears everything down, and
    /// returns how it ended. Later calls return the same outcome.
    pub fn wait(&self) -> VmExit {
        let outcome = self.exit.wait();
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(r) = running {
            if let Err(n) = r.teardown() {
                tracing::error!(
                    "VM teardown: {n} thread(s) did not stop in time and were detached"
                );
            }
        }
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(outcome)
            .clone()
    }

    /// Asks the VM to stop; [`wait`](Self::wait) then returns [`VmExit::Stopped`] (unless the guest
    /// had already ended). Safe from any thread, including a signal-handling one.
    pub fn stop(&self) {
        self.exit.signal(ExitEvent::Stop);
    }

    /// A cloneable handle that can only stop the VM (for signal threads, timeouts).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.exit.clone())
    }

    /// Counters of the run so far (boot timing, exits, device traffic).
    pub fn metrics(&self) -> VmMetrics {
        self.counters.snapshot()
    }

    /// Asks the guest to plug `bytes` of hotplug memory in all (rounded up to whole blocks;
    /// less than it has plugged asks it to unplug the rest) and raises the config interrupt its
    /// driver acts on. Returns the size asked; [`RunningVm::hotplug`] tells what the guest did.
    pub fn request_hotplug(&self, bytes: u64) -> Result<u64, VmOpError> {
        let slot = self.memory.as_ref().ok_or(VmOpError::NoHotplug)?;
        let asked = slot
            .mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_requested_size(bytes)?;
        slot.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify_config_change()
            .map_err(VmOpError::Interrupt)?;
        Ok(asked)
    }

    /// The hotplug memory's sizes (all 0 without a virtio-mem device).
    pub fn hotplug(&self) -> HotplugState {
        let Some(slot) = &self.memory else {
            return HotplugState::default();
        };
        let mem = slot.mem.lock().unwrap_or_else(|p| p.into_inner());
        HotplugState {
            region_bytes: mem.region().size,
            requested_bytes: mem.requested_size(),
            plugged_bytes: mem.plugged_size(),
        }
    }

    /// Number of virtio-blk slots, in config order.
    pub fn disk_count(&self) -> usize {
        self.disks.len()
    }

    /// Replaces disk `index`'s backing file and raises a config-change interrupt so the guest
    /// re-reads the capacity. The read-only flag stays what the guest negotiated at boot.
    pub fn swap_disk(&self, index: usize, path: &Path, id: Option<&str>) -> Result<(), VmOpError> {
        self.swap_disk_with(index, |read_only| DiskFile::open(path, read_only, id))
    }

    /// Like [`swap_disk`](Self::swap_disk) with a file opened by the caller (a jailed VMM gets it
    /// from its host over the control channel); a writable slot needs a file opened for writing.
    pub fn swap_disk_file(
        &self,
        index: usize,
        file: std::fs::File,
        id: Option<&str>,
    ) -> Result<(), VmOpError> {
        let name = std::path::PathBuf::from(format!("(disk {index} from the host)"));
        self.swap_disk_with(index, |read_only| {
            DiskFile::from_file(file, &name, read_only, id)
        })
    }

    fn swap_disk_with(
        &self,
        index: usize,
        open: impl FnOnce(bool) -> Result<DiskFile, BlockError>,
    ) -> Result<(), VmOpError> {
        let slot = self.disks.get(index).ok_or(VmOpError::NoSuchDisk(index))?;
        let mut block = slot.block.lock().unwrap_or_else(|p| p.into_inner());
        let read_only = block.avail_features_read_only();
        let disk = open(read_only)?;
        block.swap_disk(disk);
        drop(block);
        slot.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify_config_change()
            .map_err(VmOpError::Interrupt)
    }
}

impl std::fmt::Debug for RunningVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        f.debug_struct("RunningVm")
            .field("running", &running)
            .field("disks", &self.disks.len())
            .finish_non_exhaustive()
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Some(r) = self
            .running
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            self.exit.signal(ExitEvent::Stop);
            if let Err(n) = r.teardown() {
                tracing::error!(
                    "VM teardown: {n} thread(s) did not stop in time and were detached"
                );
            }
        }
    }
}

/// Stops a VM and nothing else (see [`RunningVm::stop_handle`]).
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<ExitSignal>);

impl StopHandle {
    /// Same as [`RunningVm::stop`].
    pub fn stop(&self) {
        self.0.signal(ExitEvent::Stop);
    }
}
