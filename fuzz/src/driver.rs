//! A guest driver that does what the fuzz input says, over mock guest memory, and a fixture that
//! runs one device in an event manager (as the VMM's event loop does).
//!
//! Guest memory is two regions with a 4 KiB hole between them, so descriptors can straddle a
//! region's end or point into nothing. Queue `q` lives at `q * QUEUE_STRIDE` (descriptor table,
//! avail ring, used ring; room for 256 entries). Our own layout, not `virtio_queue::mock::
//! MockSplitQueue`'s: its 0.18 used ring overlaps the avail ring's upper half (see
//! vmm/src/devices/virtio/vsock/test_utils.rs), which would blur what the driver wrote where.
//! Nothing stops the input from aliasing the rings anyway ([`Addr::Ring`]).

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vpod_vmm::devices::virtio::{ActivateContext, GuestMemory, Interrupt, VirtioDevice};

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

/// The driver's view of one split queue.
#[derive(Debug, Clone)]
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl Ring {
    /// Queue `q` of `size` entries at its place in the standard layout.
    pub fn standard(q: usize, size: u16) -> Ring {
        let base = q as u64 * QUEUE_STRIDE;
        Ring {
            size: size.max(1),
            desc: base,
            avail: base + AVAIL_OFF,
            used: base + USED_OFF,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// The device side of this ring: a ready queue of the device's `max_size`.
    pub fn queue(&self, max_size: u16) -> Option<Queue> {
        let mut q = Queue::new(max_size).ok()?;
        q.try_set_size(self.size).ok()?;
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        Some(q)
    }
}

/// Guest memory and the rings the driver writes.
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

    fn ring(&mut self, q: u8) -> Option<&mut Ring> {
        let n = self.rings.len();
        (n > 0).then(|| &mut self.rings[usize::from(q) % n])
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
        // Writes outside guest memory are the input's problem, not ours.
        let _ = self.mem.write_slice(data, GuestAddress(addr));
    }

    fn write_desc(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.write(at, &d);
    }

    /// Puts `head` in queue `q`'s next avail slot and publishes it (avail.idx + 1).
    pub fn publish(&mut self, q: u8, head: u16) {
        let Some(r) = self.ring(q) else { return };
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % r.size);
        r.avail_idx = r.avail_idx.wrapping_add(1);
        let (avail, idx) = (r.avail, r.avail_idx);
        self.write(slot, &head.to_le_bytes());
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.write(avail + 2, &idx.to_le_bytes());
    }

    /// Writes `bufs` as one chain in the next free entries of queue `q`'s table and makes it
    /// available; returns its head.
    pub fn chain(&mut self, q: u8, bufs: &[(u64, u32, bool)]) -> Option<u16> {
        let r = self.ring(q)?.clone();
        let head = r.next_desc % r.size;
        let mut idx = head;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let next = (idx + 1) % r.size;
            let mut flags = if write { 2 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= 1;
            }
            self.write_desc(r.desc + 16 * u64::from(idx), addr, len, flags, next);
            idx = next;
        }
        self.ring(q)?.next_desc = idx;
        self.publish(q, head);
        Some(head)
    }

    pub fn apply(&mut self, op: &DriverOp) {
        match op {
            DriverOp::Desc { q, index, desc } => {
                let Some(r) = self.ring(*q) else { return };
                let at = r.desc + 16 * u64::from(index % r.size);
                self.write_desc(at, desc.addr.get(), desc.len, desc.flags, desc.next);
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
                    let flags = u16::from(b.write) * 2 | u16::from(i + 1 < n);
                    let at = base.wrapping_add(16 * u64::from(i));
                    self.write_desc(at, b.addr.get(), u32::from(b.len), flags, i + 1);
                }
                let Some(r) = self.ring(*q).cloned() else {
                    return;
                };
                let head = r.next_desc % r.size;
                self.write_desc(r.desc + 16 * u64::from(head), base, u32::from(n) * 16, 4, 0);
                self.ring(*q).unwrap().next_desc = (head + 1) % r.size;
                self.publish(*q, head);
            }
            DriverOp::Publish { q, head } => self.publish(*q, *head),
            DriverOp::AvailIdx { q, idx } => {
                let Some(r) = self.ring(*q) else { return };
                r.avail_idx = *idx;
                let at = r.avail + 2;
                self.write(at, &idx.to_le_bytes());
            }
            DriverOp::AvailFlags { q, flags } => {
                let Some(r) = self.ring(*q) else { return };
                let at = r.avail;
                self.write(at, &flags.to_le_bytes());
            }
            DriverOp::UsedEvent { q, idx } => {
                let Some(r) = self.ring(*q) else { return };
                let at = r.avail + 4 + 2 * u64::from(r.size);
                self.write(at, &idx.to_le_bytes());
            }
            DriverOp::Write { addr, data } => self.write(addr.get(), data),
            // Notifications are the fixture's.
            DriverOp::Kick { .. } | DriverOp::Run => {}
        }
    }
}

/// One device, activated with the driver's queues and running in its own event manager.
pub struct Fixture<D: VirtioDevice + MutEventSubscriber + 'static> {
    pub em: EventManager<Arc<Mutex<D>>>,
    pub dev: Arc<Mutex<D>>,
    pub driver: Driver,
    pub queue_evts: Vec<EventFd>,
    pub interrupt: Arc<Interrupt>,
}

impl<D: VirtioDevice + MutEventSubscriber + 'static> Fixture<D> {
    /// Acks `features` (what of them the device offers), sets up one queue per `setup` entry
    /// (missing ones get 16 entries) and activates the device; `None` if it refuses.
    pub fn new(dev: D, features: u64, setup: &[QueueSetup]) -> Option<Self> {
        let sizes = dev.queue_max_sizes().to_vec();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<D>>>::new().ok()?;
        em.add_subscriber(dev.clone());
        let mem = guest_memory();
        let rings: Vec<Ring> = (0..sizes.len())
            .map(|i| Ring::standard(i, setup.get(i).map_or(16, |s| s.size())))
            .collect();
        let queues = rings
            .iter()
            .zip(&sizes)
            .map(|(r, max)| r.queue(*max))
            .collect::<Option<Vec<_>>>()?;
        let queue_evts: Vec<EventFd> = (0..sizes.len())
            .map(|_| EventFd::new(EFD_NONBLOCK).ok())
            .collect::<Option<_>>()?;
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).ok()?));
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues,
            queue_events: queue_evts
                .iter()
                .map(|e| e.try_clone().ok())
                .collect::<Option<_>>()?,
            interrupt: interrupt.clone(),
        };
        {
            let mut d = dev.lock().unwrap();
            let features = features & d.avail_features();
            d.set_acked_features(features);
            d.activate(ctx).ok()?;
        }
        let mut f = Fixture {
            em,
            dev,
            driver: Driver::new(mem, rings),
            queue_evts,
            interrupt,
        };
        f.run();
        Some(f)
    }

    /// A few event-loop turns (no waiting), fewer if nothing is ready.
    pub fn run(&mut self) {
        for _ in 0..RUN_TURNS {
            match self.em.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // The driver acks interrupts now and then; the irqfd counter must not fill up either.
        let _ = self.interrupt.irqfd().read();
        self.interrupt.ack(u32::MAX);
    }

    pub fn kick(&mut self, q: u8) {
        let n = self.queue_evts.len();
        if n > 0 {
            let _ = self.queue_evts[usize::from(q) % n].write(1);
        }
        self.run();
    }

    pub fn apply(&mut self, op: &DriverOp) {
        match op {
            DriverOp::Kick { q } => self.kick(*q),
            DriverOp::Run => self.run(),
            op => self.driver.apply(op),
        }
    }

    /// Kicks every queue and runs: what a driver's last notification would do.
    pub fn finish(&mut self) {
        for q in 0..self.queue_evts.len() {
            let _ = self.queue_evts[q].write(1);
        }
        self.run();
    }
}
