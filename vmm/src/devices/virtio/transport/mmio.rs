//! virtio-mmio version 2 ("modern") transport: the register file a driver sees in a device's 4 KiB
//! window, the status state machine, and activation of the device on DRIVER_OK.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::bus::BusDevice;
use crate::devices::latch::latched_warn;
use crate::devices::latch::WarnLatch;
use crate::devices::virtio::device::{
    ActivateContext, GuestMemory, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_CONFIG,
};

mod regs;
pub use regs::*;

const S_ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const S_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const S_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const S_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const S_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const S_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

/// Kinds of driver misuse, each warned about once per transport (then logged at debug level).
mod misuse {
    pub const UNKNOWN_REGISTER: u32 = 0;
    pub const BAD_ACCESS: u32 = 1;
    pub const BAD_QUEUE_SIZE: u32 = 2;
    pub const QUEUE_WRITE_STATE: u32 = 3;
    pub const FEATURE_WRITE_STATE: u32 = 4;
    pub const UNOFFERED_FEATURES: u32 = 5;
    pub const FEATURES_OK_REFUSED: u32 = 6;
    pub const BAD_STATUS: u32 = 7;
    pub const BAD_QUEUE: u32 = 8;
    pub const ACTIVATE: u32 = 9;
    pub const RESET: u32 = 10;
}

/// Why a transport could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue of the device's maximum size (size, error).
    #[error("creating a queue of size {0}: {1:?}")]
    Queue(u16, virtio_queue::Error),
    /// A queue notification eventfd.
    #[error("creating eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// A virtio-mmio window in front of one device: the registers, the queues the driver sets up
/// (handed to the device on DRIVER_OK) and the device's interrupt.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    device_type: u32,
    avail_features: u64,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    /// The driver tried to ack a feature we don't offer: FEATURES_OK will be refused.
    features_rejected: bool,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    /// Driver misuse already warned about (see [`misuse`]).
    misuse: WarnLatch,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// `irqfd` is what the VM registers for the device's GSI.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemory,
        irqfd: EventFd,
    ) -> Result<Self, MmioError> {
        let (device_type, avail_features, sizes) = {
            let d = device.lock().unwrap_or_else(|p| p.into_inner());
            (
                d.device_type(),
                d.avail_features(),
                d.queue_max_sizes().to_vec(),
            )
        };
        let queues = sizes
            .iter()
            .map(|s| Queue::new(*s).map_err(|e| MmioError::Queue(*s, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            device_type,
            avail_features,
            mem,
            interrupt: Arc::new(Interrupt::new(irqfd)),
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            features_rejected: false,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            misuse: WarnLatch::new(),
        })
    }

    /// The device's interrupt line (its irqfd is what the VM registers for the GSI).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// One eventfd per queue, to register as ioeventfds on QueueNotify with datamatch = index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The Status register as the driver last set it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The device behind the window.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// Tells the driver the config space changed (e.g. a disk was resized or swapped).
    pub fn notify_config_change(&mut self) -> std::io::Result<()> {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.trigger(VIRTIO_MMIO_INT_CONFIG)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers are writable after FEATURES_OK and before DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.status & (S_FEATURES_OK | S_DRIVER_OK | S_FAILED) == S_FEATURES_OK
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.queue_config_allowed() {
            latched_warn!(
                self.misuse,
                misuse::QUEUE_WRITE_STATE,
                "virtio-mmio: queue register write in status {:#x} ignored",
                self.status
            );
            return;
        }
        if let Some(q) = self.selected_queue() {
            f(q)
        }
    }

    fn lock_device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => {
                // A device that found its queues broken flags it on the shared interrupt.
                if self.interrupt.needs_reset() {
                    self.status | S_NEEDS_RESET
                } else {
                    self.status
                }
            }
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                latched_warn!(
                    self.misuse,
                    misuse::UNKNOWN_REGISTER,
                    "virtio-mmio: read of unknown register {offset:#x}"
                );
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => self.ack_features(v),
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                let mut ok = true;
                self.update_queue(|q| {
                    ok = u16::try_from(v).is_ok_and(|size| q.try_set_size(size).is_ok());
                });
                if !ok {
                    // Not a power of two, zero, or above QueueNumMax: the driver is broken.
                    latched_warn!(
                        self.misuse,
                        misuse::BAD_QUEUE_SIZE,
                        "virtio-mmio: bad queue size {v}"
                    );
                    self.fail();
                }
            }
            REG_QUEUE_READY => self.update_queue(|q| q.set_ready(v == 1)),
            REG_QUEUE_DESC_LOW => self.update_queue(|q| q.set_desc_table_address(Some(v), None)),
            REG_QUEUE_DESC_HIGH => self.update_queue(|q| q.set_desc_table_address(None, Some(v))),
            REG_QUEUE_DRIVER_LOW => self.update_queue(|q| q.set_avail_ring_address(Some(v), None)),
            REG_QUEUE_DRIVER_HIGH => self.update_queue(|q| q.set_avail_ring_address(None, Some(v))),
            REG_QUEUE_DEVICE_LOW => self.update_queue(|q| q.set_used_ring_address(Some(v), None)),
            REG_QUEUE_DEVICE_HIGH => self.update_queue(|q| q.set_used_ring_address(None, Some(v))),
            REG_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd in KVM; this is the fallback path.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    if let Err(e) = evt.write(1) {
                        tracing::warn!("virtio-mmio: queue notify: {e}");
                    }
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            _ => latched_warn!(
                self.misuse,
                misuse::UNKNOWN_REGISTER,
                "virtio-mmio: write of unknown register {offset:#x}"
            ),
        }
    }

    fn ack_features(&mut self, v: u32) {
        if self.status & (S_DRIVER | S_FEATURES_OK | S_FAILED) != S_DRIVER {
            latched_warn!(
                self.misuse,
                misuse::FEATURE_WRITE_STATE,
                "virtio-mmio: feature write in status {:#x} ignored",
                self.status
            );
            return;
        }
        let (value, mask) = match self.driver_features_sel {
            0 => (u64::from(v), 0xffff_ffffu64),
            1 => (u64::from(v) << 32, 0xffff_ffff_0000_0000u64),
            _ => {
                if v != 0 {
                    self.features_rejected = true;
                }
                return;
            }
        };
        if value & !self.avail_features != 0 {
            latched_warn!(
                self.misuse,
                misuse::UNOFFERED_FEATURES,
                "virtio-mmio: driver acked features {:#x} that were not offered",
                value & !self.avail_features
            );
            self.features_rejected = true;
        }
        self.acked_features = (self.acked_features & !mask) | (value & self.avail_features);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & S_FAILED != 0 {
            self.status |= S_FAILED;
            return;
        }
        let cur = self.status;
        // Each step may only add the next bit (the driver writes the cumulative value).
        match (cur, v) {
            (0, S_ACK) => self.status = v,
            (S_ACK, x) if x == S_ACK | S_DRIVER => self.status = v,
            (x, y) if x == S_ACK | S_DRIVER && y == x | S_FEATURES_OK => {
                // Modern transport: VERSION_1 is mandatory; offered-only features.
                let version_1 = self.acked_features & (1 << VIRTIO_F_VERSION_1) != 0;
                if self.features_rejected || !version_1 {
                    latched_warn!(
                        self.misuse,
                        misuse::FEATURES_OK_REFUSED,
                        "virtio-mmio: refusing FEATURES_OK (features {:#x})",
                        self.acked_features
                    );
                    return;
                }
                self.lock_device().set_acked_features(self.acked_features);
                self.status = v;
            }
            (x, y) if x == S_ACK | S_DRIVER | S_FEATURES_OK && y == x | S_DRIVER_OK => {
                self.status = v;
                self.activate();
            }
            _ => latched_warn!(
                self.misuse,
                misuse::BAD_STATUS,
                "virtio-mmio: invalid status transition {cur:#x} -> {v:#x}"
            ),
        }
    }

    fn activate(&mut self) {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                latched_warn!(
                    self.misuse,
                    misuse::BAD_QUEUE,
                    "virtio-mmio: queue {i} is not valid (addresses outside guest memory?)"
                );
                self.fail();
                return;
            }
            match Queue::try_from(q.state()) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    latched_warn!(
                        self.misuse,
                        misuse::BAD_QUEUE,
                        "virtio-mmio: queue {i}: {e:?}"
                    );
                    self.fail();
                    return;
                }
            }
        }
        let mut queue_events = Vec::with_capacity(self.queue_evts.len());
        for evt in &self.queue_evts {
            match evt.try_clone() {
                Ok(e) => queue_events.push(e),
                Err(e) => {
                    tracing::error!("virtio-mmio: cloning queue eventfd: {e}");
                    self.fail();
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
        };
        let result = self.lock_device().activate(ctx);
        if let Err(e) = result {
            latched_warn!(
                self.misuse,
                misuse::ACTIVATE,
                "virtio-mmio: activating device type {}: {e}",
                self.device_type
            );
            self.fail();
        }
    }

    /// Tells the driver the device is broken and needs a reset.
    fn fail(&mut self) {
        self.status |= S_NEEDS_RESET;
        let _ = self.notify_config_change();
    }

    fn reset(&mut self) {
        let activated = self.lock_device().is_activated();
        if activated && !self.lock_device().reset() {
            latched_warn!(
                self.misuse,
                misuse::RESET,
                "virtio-mmio: device type {} can't be reset; it stays failed",
                self.device_type
            );
            self.status = S_FAILED;
            return;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.features_rejected = false;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.clear_needs_reset();
        self.interrupt.ack(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.lock_device().read_config(offset - REG_CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            latched_warn!(
                self.misuse,
                misuse::BAD_ACCESS,
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            self.lock_device().write_config(offset - REG_CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            latched_warn!(
                self.misuse,
                misuse::BAD_ACCESS,
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}

#[cfg(test)]
mod tests;
