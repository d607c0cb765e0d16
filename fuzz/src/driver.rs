//! A guest driver that does what the fuzz input says, over mock guest memory, and a fixture that
//! runs one device in an event manager (as the VMM's event loop does). Both stand on the VMM's
//! driver-side test harness (`vpod_vmm::devices::virtio::test_utils`, feature `test-utils`): its
//! [`Ring`] writes the queues, its [`Harness`] runs the device; what is the fuzzer's own is the
//! memory, the layout, the ops and how long the event loop runs.
//!
//! Guest memory is two regions with a 4 KiB hole between them, so descriptors can straddle a
//! region's end or point into nothing. Queue `q` lives at `q * QUEUE_STRIDE` (descriptor table,
//! avail ring, used ring; room for 256 entries). Nothing stops the input from aliasing the rings
//! anyway ([`Addr::Ring`]).

use arbitrary::Arbitrary;
use event_manager::MutEventSubscriber;
use vm_memory::{Bytes, GuestAddress};
use vpod_vmm::devices::virtio::test_utils::{self, write_desc_at, Harness, Ring};
use vpod_vmm::devices::virtio::{GuestMemory, VirtioDevice};

pub const REGION0: (u64, usize) = (0, 0x10_0000);
pub const REGION1: (u64, usize) = (0x10_1000, 0x10_0000);
pub const QUEUE_STRIDE: u64 = 0x2000;
const AVAIL_OFF: u64 = 0x1000;
const USED_OFF: u64 = 0x1400;
/// Where [`Addr::Data`] points (after the rings of up to 4 queues).
pub const DATA: u64 = 0x8000;
/// Scratch the driver takes headers from (a ring of 64 KiB, below the first region's end).
const SCRATCH: (u64, u64) = (0xE_0000, 0x1_0000);
/// Event-loop turns per `Run`/`Kick`: a device that used its budget re-signals itself and gets
/// the next turn; more turns than this is the next op's business.
pub const RUN_TURNS: usize = 8;

pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(REGION0.0), REGION0.1),
        (GuestAddress(REGION1.0), REGION1.1),
    ])
    .expect("mock guest memory")
}

/// A guest-physical address, mostly somewhere useful.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// Data area, 8-byte steps.
    Data(u16),
    /// Anywhere in the queues' rings.
    Ring(u16),
    /// Around the first region's end, the hole and the second region's start.
    Edge(u16),
    Raw(u64),
}

impl Addr {
    pub fn get(self) -> u64 {
        match self {
            Addr::Data(x) => DATA + u64::from(x) * 8,
            Addr::Ring(x) => u64::from(x) % DATA,
            Addr::Edge(x) => REGION0.1 as u64 - 0x1000 + u64::from(x) % 0x3000,
            Addr::Raw(a) => a,
        }
    }
}

/// One buffer of a well-formed chain.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub addr: Addr,
    pub len: u16,
    pub write: bool,
}

/// A raw descriptor (flags as is: NEXT 1, WRITE 2, INDIRECT 4).
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: Addr,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// What the driver does to guest memory and the device's notifications.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum DriverOp {
    /// Writes descriptor `index` of queue `q`'s table as is.
    Desc { q: u8, index: u16, desc: Desc },
    /// A well-formed chain in the next free table entries, made available.
    Chain { q: u8, bufs: Vec<Buf> },
    /// An indirect table at `table` holding `bufs`, made available through one descriptor.
    Indirect { q: u8, table: Addr, bufs: Vec<Buf> },
    /// Puts `head` in the next avail slot and publishes it.
    Publish { q: u8, head: u16 },
    /// Writes avail.idx as is.
    AvailIdx { q: u8, idx: u16 },
    /// Writes avail.flags (NO_INTERRUPT 1).
    AvailFlags { q: u8, flags: u16 },
    /// Writes used_event (the slot after the avail ring; VIRTIO_RING_F_EVENT_IDX).
    UsedEvent { q: u8, idx: u16 },
    /// Writes payload bytes.
    Write { addr: Addr, data: Vec<u8> },
    /// QueueNotify on queue `q`, then the event loop runs.
    Kick { q: u8 },
    /// The event loop runs.
    Run,
}

/// Queue size as `1 << (size_log2 % 9)` (1..=256), the driver's choice.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSetup {
    pub size_log2: u8,
}

impl QueueSetup {
    pub fn size(self) -> u16 {
        1 << (self.size_log2 % 9)
    }
}

/// Queue `q` of `size` entries at its place in the standard layout.
pub fn standard_ring(q: usize, size: u16) -> Ring {
    let base = q as u64 * QUEUE_STRIDE;
    Ring::new(size.max(1), base, base + AVAIL_OFF, base + USED_OFF)
}

/// Queue `q`'s ring (`q` modulo the number of queues), if there are any.
fn ring(rings: &mut [Ring], q: u8) -> Option<&mut Ring> {
    let n = rings.len();
    (n > 0).then(|| &mut rings[usize::from(q) % n])
}

/// Guest memory and the rings the driver writes. Writes outside guest memory are the input's
/// problem, not ours: every error is ignored.
pub struct Driver {
    pub mem: GuestMemory,
    pub rings: Vec<Ring>,
    scratch: u64,
}

impl Driver {
    pub fn new(mem: GuestMemory, rings: Vec<Ring>) -> Driver {
        Driver {
            mem,
            rings,
            scratch: 0,
        }
    }

    /// `len` bytes of scratch (a rolling window: old headers get overwritten eventually).
    pub fn scratch(&mut self, len: u64) -> u64 {
        let len = len.min(SCRATCH.1);
        if self.scratch + len > SCRATCH.1 {
            self.scratch = 0;
        }
        let a = SCRATCH.0 + self.scratch;
        self.scratch = (self.scratch + len + 15) & !15;
        a
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        let _ = self.mem.write_slice(data, GuestAddress(addr));
    }

    /// Puts `head` in queue `q`'s next avail slot and publishes it (avail.idx + 1).
    pub fn publish(&mut self, q: u8, head: u16) {
        if let Some(r) = ring(&mut self.rings, q) {
            let _ = r.publish(&self.mem, head);
        }
    }

    /// Writes `bufs` as one chain in the next free entries of queue `q`'s table and makes it
    /// available; returns its head.
    pub fn chain(&mut self, q: u8, bufs: &[(u64, u32, bool)]) -> Option<u16> {
        ring(&mut self.rings, q)?.add_chain(&self.mem, bufs).ok()
    }

    pub fn apply(&mut self, op: &DriverOp) {
        let mem = &self.mem;
        match op {
            DriverOp::Desc { q, index, desc } => {
                let Some(r) = ring(&mut self.rings, *q) else {
                    return;
                };
                let d = test_utils::Desc::new(desc.addr.get(), desc.len, desc.flags, desc.next);
                let _ = r.write_desc(mem, index % r.size, d);
            }
            DriverOp::Chain { q, bufs } => {
                let bufs: Vec<_> = bufs
                    .iter()
                    .map(|b| (b.addr.get(), u32::from(b.len), b.write))
                    .collect();
                self.chain(*q, &bufs);
            }
            DriverOp::Indirect { q, table, bufs } => {
                let base = table.get();
                let n = bufs.len() as u16;
                for (i, b) in bufs.iter().enumerate() {
                    let i = i as u16;
                    let flags = (u16::from(b.write) * 2) | u16::from(i + 1 < n);
                    let at = base.wrapping_add(16 * u64::from(i));
                    let d = test_utils::Desc::new(b.addr.get(), u32::from(b.len), flags, i + 1);
                    let _ = write_desc_at(mem, at, d);
                }
                let Some(r) = ring(&mut self.rings, *q) else {
                    return;
                };
                let head = r.next_free();
                let _ = r.add_desc(mem, test_utils::Desc::new(base, u32::from(n) * 16, 4, 0));
                let _ = r.publish(mem, head);
            }
            DriverOp::Publish { q, head } => self.publish(*q, *head),
            DriverOp::AvailIdx { q, idx } => {
                if let Some(r) = ring(&mut self.rings, *q) {
                    let _ = r.set_avail_idx(mem, *idx);
                }
            }
            DriverOp::AvailFlags { q, flags } => {
                if let Some(r) = ring(&mut self.rings, *q) {
                    let _ = r.set_avail_flags(mem, *flags);
                }
            }
            DriverOp::UsedEvent { q, idx } => {
                if let Some(r) = ring(&mut self.rings, *q) {
                    let _ = r.set_used_event(mem, *idx);
                }
            }
            DriverOp::Write { addr, data } => self.write(addr.get(), data),
            // Notifications are the fixture's.
            DriverOp::Kick { .. } | DriverOp::Run => {}
        }
    }
}

/// One device, activated with the driver's queues and running in its own event manager.
pub struct Fixture<D: VirtioDevice + MutEventSubscriber + 'static> {
    h: Harness<D, Driver>,
}

impl<D: VirtioDevice + MutEventSubscriber + 'static> Fixture<D> {
    /// Acks `features` (what of them the device offers), sets up one queue per `setup` entry
    /// (missing ones get 16 entries) and activates the device; `None` if it refuses.
    pub fn new(mut dev: D, features: u64, setup: &[QueueSetup]) -> Option<Self> {
        let sizes = dev.queue_max_sizes().to_vec();
        let features = features & dev.avail_features();
        dev.set_acked_features(features);
        let mem = guest_memory();
        let rings: Vec<Ring> = (0..sizes.len())
            .map(|i| standard_ring(i, setup.get(i).map_or(16, |s| s.size())))
            .collect();
        let queues = rings
            .iter()
            .zip(&sizes)
            .map(|(r, max)| r.queue(*max).ok())
            .collect::<Option<Vec<_>>>()?;
        let driver = Driver::new(mem.clone(), rings);
        let mut f = Fixture {
            h: Harness::start(dev, &mem, queues, driver).ok()?,
        };
        f.run();
        Some(f)
    }

    /// The guest's driver.
    pub fn driver(&mut self) -> &mut Driver {
        &mut self.h.guest
    }

    /// The device, as the event loop shares it (for the host's side of it).
    pub fn device(&self) -> &std::sync::Arc<std::sync::Mutex<D>> {
        &self.h.dev
    }

    /// A few event-loop turns (no waiting), fewer if nothing is ready.
    pub fn run(&mut self) {
        self.h.run_turns(RUN_TURNS);
        // The driver acks interrupts now and then; the irqfd counter must not fill up either.
        let _ = self.h.interrupt.irqfd().read();
        self.h.interrupt.ack(u32::MAX);
    }

    pub fn kick(&mut self, q: u8) {
        let n = self.h.queue_evts.len();
        if n > 0 {
            let _ = self.h.queue_evts[usize::from(q) % n].write(1);
        }
        self.run();
    }

    pub fn apply(&mut self, op: &DriverOp) {
        match op {
            DriverOp::Kick { q } => self.kick(*q),
            DriverOp::Run => self.run(),
            op => self.h.guest.apply(op),
        }
    }

    /// Kicks every queue and runs: what a driver's last notification would do.
    pub fn finish(&mut self) {
        for evt in &self.h.queue_evts {
            let _ = evt.write(1);
        }
        self.run();
    }
}
