//! The contract between a virtio device and its transport (virtio-mmio here), and the skeleton
//! every device shares: a [`DeviceState`] (inactive, or activated with its queues), the
//! features the driver acked, activation and reset ([`Lifecycle`]), and a config read over the
//! device's config bytes. A device supplies what is its own: its type, queues, features and
//! config bytes, the checks it makes on activation, and its queue processing.
//!
//! Threads: the transport runs on vCPU threads (MMIO exits); the device's queue processing runs on the
//! VMM's single event-loop thread (an `event_manager::EventManager`). A device is therefore shared as
//! `Arc<Mutex<D>>`: the transport holds it as `dyn VirtioDevice`, the event manager as a
//! `MutEventSubscriber`.
//!
//! Activation (driver writes DRIVER_OK) happens on a vCPU thread, but epoll registration must happen on
//! the event-loop thread. So, as in Firecracker, `activate` stores the [`ActivateContext`] and signals the
//! device's own activate eventfd (registered in `MutEventSubscriber::init`); the event handler then
//! registers the queue eventfds and backend fds (disk, tap, unix sockets) with `EventOps`. A reset
//! signals the same eventfd, for the event loop to drop the old queue eventfds.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, Events};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use crate::vstate::memory::GuestMemory;

/// InterruptStatus bit: the device used buffers in a queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// InterruptStatus bit: the device's configuration (or DEVICE_NEEDS_RESET) changed.
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
    /// A line raised through `irqfd`, with no status bits set.
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

    /// Whether the device is in DEVICE_NEEDS_RESET (it leaves its queues alone until a reset).
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

/// Everything a device needs to run, handed over when the driver sets DRIVER_OK; an activated
/// device keeps it (see [`DeviceState`]).
#[derive(Debug)]
pub struct ActivateContext {
    /// The guest's memory, where the queues and their buffers are.
    pub mem: GuestMemory,
    /// Queues configured by the driver, in device queue order (only `ready` ones are meaningful).
    pub queues: Vec<Queue>,
    /// One eventfd per queue, signalled (by KVM ioeventfd or by the transport) on QueueNotify.
    pub queue_events: Vec<EventFd>,
    /// The device's interrupt line.
    pub interrupt: Arc<Interrupt>,
}

impl ActivateContext {
    /// Consumes queue `q`'s pending notifications.
    pub fn read_queue_event(&self, q: usize) {
        let _ = self.queue_events[q].read();
    }

    /// After the device used buffers of queue `q`: raises the used-ring interrupt unless the
    /// driver suppressed it (EVENT_IDX, where the queue has it enabled).
    pub fn notify_used(&mut self, q: usize, device: &str) {
        if !self.queues[q].needs_notification(&self.mem).unwrap_or(true) {
            return;
        }
        if let Err(e) = self.interrupt.trigger(VIRTIO_MMIO_INT_VRING) {
            tracing::warn!("{device}: raising the used-ring interrupt: {e}");
        }
    }
}

/// Why a device refused activation (the transport then fails the device: DEVICE_NEEDS_RESET).
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured another number of queues than the device has.
    #[error("device expects {expected} queues, driver configured {got}")]
    QueueCount {
        /// The device's queues.
        expected: usize,
        /// The driver's.
        got: usize,
    },
    /// DRIVER_OK again without a reset in between.
    #[error("device already activated")]
    AlreadyActive,
    /// The event loop could not be told.
    #[error("signalling activation: {0}")]
    Signal(#[source] std::io::Error),
    /// The device's own checks or setup (a queue not ready, the tap refusing offloads).
    #[error("{0}")]
    Backend(String),
}

/// Where a device is (virtio 1.2 §3.1): inactive until the driver sets DRIVER_OK, then activated
/// with its queues until a driver reset.
#[derive(Debug)]
pub enum DeviceState {
    /// Before DRIVER_OK, or after a reset.
    Inactive,
    /// Running on what the transport handed over.
    Activated(ActivateContext),
}

impl DeviceState {
    /// Whether the device is activated.
    pub fn is_activated(&self) -> bool {
        matches!(self, DeviceState::Activated(_))
    }

    /// What an activated device runs on.
    pub fn active(&self) -> Option<&ActivateContext> {
        match self {
            DeviceState::Activated(ctx) => Some(ctx),
            DeviceState::Inactive => None,
        }
    }

    /// What an activated device runs on, to process its queues.
    pub fn active_mut(&mut self) -> Option<&mut ActivateContext> {
        match self {
            DeviceState::Activated(ctx) => Some(ctx),
            DeviceState::Inactive => None,
        }
    }
}

/// The part of every device the skeleton runs: its [`DeviceState`], the features the driver
/// acked, and the activate eventfd that hands activation and reset over to the event loop (with
/// the queue eventfds a reset retired, for the event loop to drop from epoll).
#[derive(Debug)]
pub struct Lifecycle {
    state: DeviceState,
    acked_features: u64,
    activate_evt: EventFd,
    /// Queue eventfds of a previous activation, to be removed from epoll by the event loop.
    retired: Vec<EventFd>,
    /// Whether the current activation's queue eventfds are registered with the event loop.
    registered: bool,
}

impl Lifecycle {
    /// An inactive device's.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            state: DeviceState::Inactive,
            acked_features: 0,
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            retired: Vec::new(),
            registered: false,
        })
    }

    /// Inactive or activated.
    pub fn state(&self) -> &DeviceState {
        &self.state
    }

    /// Whether the device is activated.
    pub fn is_activated(&self) -> bool {
        self.state.is_activated()
    }

    /// What an activated device runs on.
    pub fn active(&self) -> Option<&ActivateContext> {
        self.state.active()
    }

    /// What an activated device runs on, to process its queues.
    pub fn active_mut(&mut self) -> Option<&mut ActivateContext> {
        self.state.active_mut()
    }

    /// Features the driver acked (none before FEATURES_OK, none again after a reset).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the driver acked feature `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.acked_features & (1 << bit) != 0
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.state = DeviceState::Activated(ctx);
        self.registered = false;
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    /// Driver reset: back to inactive with no features; the event loop is told to drop the old
    /// queue eventfds. Nothing happens to a device that isn't activated.
    pub fn reset(&mut self) {
        if let DeviceState::Activated(ctx) =
            std::mem::replace(&mut self.state, DeviceState::Inactive)
        {
            self.retired.extend(ctx.queue_events);
            self.acked_features = 0;
            self.registered = false;
            let _ = self.activate_evt.write(1);
        }
    }

    /// Consumes queue `q`'s pending notifications (nothing if the device is inactive).
    pub fn read_queue_event(&self, q: usize) {
        if let Some(active) = self.active() {
            active.read_queue_event(q);
        }
    }

    /// Event loop, `init`: registers the activate eventfd under `activate` (for the device's
    /// life: a reset signals it too) and, if the device is already activated, its queue
    /// eventfds, queue `i` under `queues[i]`. Returns whether it registered those (the caller
    /// then registers its backend fds).
    pub fn init_events(
        &mut self,
        ops: &mut EventOps,
        activate: u32,
        queues: &[u32],
        device: &str,
    ) -> bool {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            activate,
            EventSet::IN,
        )) {
            tracing::error!("{device}: registering the activate eventfd: {e:?}");
        }
        self.register_queue_events(ops, queues, device)
    }

    /// Event loop, on the activate eventfd: consumes it, drops the queue eventfds a reset
    /// retired from epoll and registers the current activation's, as in
    /// [`Lifecycle::init_events`]. Returns whether it registered them now.
    pub fn on_activate_event(&mut self, ops: &mut EventOps, queues: &[u32], device: &str) -> bool {
        let _ = self.activate_evt.read();
        for evt in self.retired.drain(..) {
            let _ = ops.remove(Events::empty(&evt));
        }
        self.register_queue_events(ops, queues, device)
    }

    /// Registers the queue eventfds if the device is activated and they aren't yet.
    fn register_queue_events(&mut self, ops: &mut EventOps, tokens: &[u32], device: &str) -> bool {
        let Some(active) = self.state.active() else {
            return false;
        };
        if self.registered {
            return false;
        }
        for (i, (evt, token)) in active.queue_events.iter().zip(tokens).enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, *token, EventSet::IN)) {
                tracing::error!("{device}: registering queue {i}'s eventfd: {e:?}");
            }
        }
        self.registered = true;
        true
    }
}

/// Implements [`VirtioDevice::lifecycle`] and [`VirtioDevice::lifecycle_mut`] over the device's
/// `lifecycle` field (inside `impl VirtioDevice for ...`).
macro_rules! lifecycle_field {
    () => {
        fn lifecycle(&self) -> &$crate::devices::virtio::device::Lifecycle {
            &self.lifecycle
        }

        fn lifecycle_mut(&mut self) -> &mut $crate::devices::virtio::device::Lifecycle {
            &mut self.lifecycle
        }
    };
}
pub(crate) use lifecycle_field;

/// Event loop: an event whose token no source of the device was registered with.
pub fn spurious_event(device: &str, token: u32) {
    tracing::warn!(token, "{device}: spurious event");
}

/// Reads `config` at `offset` into `data`; bytes past its end read as zero.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|o| config.get(usize::try_from(o).ok()?))
            .copied()
            .unwrap_or(0);
    }
}

/// A virtio device as the transport drives it (virtio 1.x, split queues). A device provides its
/// identity, queues, features and config bytes and hands its [`Lifecycle`] to the skeleton,
/// which activates, resets and reads the config the same way for every device.
pub trait VirtioDevice: Send {
    /// VIRTIO_ID_* of `virtio_bindings::virtio_ids`.
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers (include `VIRTIO_F_VERSION_1`).
    fn avail_features(&self) -> u64;

    /// The device's state as the skeleton keeps it.
    fn lifecycle(&self) -> &Lifecycle;

    /// The same, to change.
    fn lifecycle_mut(&mut self) -> &mut Lifecycle;

    /// Features the driver accepted: those of `features` the device offers (the transport
    /// refuses FEATURES_OK for others).
    fn set_acked_features(&mut self, features: u64) {
        let acked = features & self.avail_features();
        self.lifecycle_mut().acked_features = acked;
    }

    /// The device's config space (virtio 1.2 §4.2.2.2: at offset 0x100 of the MMIO window).
    fn config_space(&self) -> &[u8] {
        &[]
    }

    /// Reads device config space at `offset`; bytes past the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(self.config_space(), offset, data);
    }

    /// Writes device config space; most devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// The device's own checks and setup on activation, before it counts as activated (an error
    /// leaves it inactive).
    fn prepare_activation(&mut self, _ctx: &mut ActivateContext) -> Result<(), ActivateError> {
        Ok(())
    }

    /// Starts the device (see module docs: keep `ctx`, signal the event loop).
    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::AlreadyActive);
        }
        let expected = self.queue_max_sizes().len();
        if ctx.queues.len() != expected || ctx.queue_events.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: ctx.queues.len().min(ctx.queue_events.len()),
            });
        }
        self.prepare_activation(&mut ctx)?;
        self.lifecycle_mut().activate(ctx)
    }

    /// Driver reset (status 0). Returns false if the device can't be reset (the transport then keeps
    /// it failed). A device that can calls [`Lifecycle::reset`]: it stops processing and drops its
    /// queues.
    fn reset(&mut self) -> bool {
        false
    }

    /// Whether the driver set DRIVER_OK and the device accepted (until a reset).
    fn is_activated(&self) -> bool {
        self.lifecycle().is_activated()
    }
}
