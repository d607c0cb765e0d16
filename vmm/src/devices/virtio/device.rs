//! The contract between a virtio device and its transport (virtio-mmio here).
//!
//! Threads: the transport runs on vCPU threads (MMIO exits); the device's queue processing runs on the
//! VMM's single event-loop thread (an `event_manager::EventManager`). A device is therefore shared as
//! `Arc<Mutex<D>>`: the transport holds it as `dyn VirtioDevice`, the event manager as a
//! `MutEventSubscriber`.
//!
//! Activation (driver writes DRIVER_OK) happens on a vCPU thread, but epoll registration must happen on
//! the event-loop thread. So, as in Firecracker, `activate` stores the [`ActivateContext`] and signals the
//! device's own `activate_evt` (registered in `MutEventSubscriber::init`); the event handler then
//! registers the queue eventfds and backend fds (disk, tap, unix sockets) with `EventOps`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::vstate::memory::RegionOwner;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as every device sees it.
pub type GuestMemory = GuestMemoryMmap<RegionOwner>;

/// Bits of the virtio-mmio InterruptStatus register.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// A device's interrupt line: the status bits the driver reads and acks through the transport, and an
/// irqfd (registered with KVM for the device's GSI) that raises the line.
///
/// It also carries the device's DEVICE_NEEDS_RESET condition from the event loop (where a device
/// finds its queues broken) to the transport (which shows it in the Status register and clears it
/// on a driver reset): a device must not touch its queues while [`Interrupt::needs_reset`] is set.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
    needs_reset: AtomicBool,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
            needs_reset: AtomicBool::new(false),
        }
    }

    /// The device hit an error it can't recover from without a reset (virtio 1.2 §2.1.2): flags
    /// DEVICE_NEEDS_RESET and sends a config-change interrupt. Only the first call raises it.
    pub fn set_needs_reset(&self) -> std::io::Result<()> {
        if self.needs_reset.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.trigger(VIRTIO_MMIO_INT_CONFIG)
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Driver reset (by the transport, after the device itself was reset).
    pub fn clear_needs_reset(&self) {
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Sets `bits` in InterruptStatus and raises the line.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// Current InterruptStatus (read by the driver through the transport).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK from the driver.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd the VM registers as irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// Everything a device needs to run, handed over when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: GuestMemory,
    /// Queues configured by the driver, in device queue order (only `ready` ones are meaningful).
    pub queues: Vec<Queue>,
    /// One eventfd per queue, signalled (by KVM ioeventfd or by the transport) on QueueNotify.
    pub queue_events: Vec<EventFd>,
    pub interrupt: Arc<Interrupt>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device expects {expected} queues, driver configured {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device already activated")]
    AlreadyActive,
    #[error("signalling activation: {0}")]
    Signal(#[source] std::io::Error),
    #[error("{0}")]
    Backend(String),
}

/// A virtio device as the transport drives it (virtio 1.x, split queues).
pub trait VirtioDevice: Send {
    /// VIRTIO_ID_* of `virtio_bindings::virtio_ids`.
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers (include `VIRTIO_F_VERSION_1`).
    fn avail_features(&self) -> u64;

    /// Features the driver accepted (a subset of `avail_features`, checked by the transport).
    fn set_acked_features(&mut self, features: u64);

    /// Reads device config space at `offset`; bytes past the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device config space; most devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// Starts the device (see module docs: store `ctx`, signal the event loop).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// Driver reset (status 0). Returns false if the device can't be reset (the transport then keeps
    /// it failed). Devices stop processing and drop their queues.
    fn reset(&mut self) -> bool {
        false
    }

    fn is_activated(&self) -> bool;
}
