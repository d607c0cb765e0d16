//! The driver's side of virtio, for tests: split queues in test guest memory written the way a
//! guest driver writes them (descriptor table and avail ring; the device's answers read back
//! from the used ring), and a [`Harness`] that runs one device in an event manager as the VMM's
//! event loop does. Every device's tests use it, and so does the fuzz crate (feature
//! `test-utils`).
//!
//! [`Ring`] is the primitive: one queue at addresses of the caller's choice, each write returning
//! its error (a fuzzer's driver writes anywhere). [`Guest`] is the tests' driver on top of it:
//! rings packed from address 0, buffers handed out above them, every error a panic.
//!
//! Our own layout, not `virtio_queue::mock::MockSplitQueue`'s: its 0.18 used ring starts right
//! after `avail + 4 + len` *bytes*, overlapping the avail ring's upper half.

use std::collections::HashMap;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{ActivateContext, ActivateError, GuestMemory, Interrupt, VirtioDevice};

/// Size of a [`Guest::new`]'s memory.
pub const MEM_SIZE: usize = 0x100_0000;
/// Descriptor flag: the chain goes on at `next`.
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Descriptor flag: the device writes this buffer.
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Room per queue in a [`Guest`]'s layout (rings of up to 2048 entries).
const QUEUE_STRIDE: u64 = 0x1_0000;
/// Where a [`Guest`]'s buffers start (above the rings of up to 16 queues).
const BUF_START: u64 = 0x10_0000;

/// Result of a driver's write or read of guest memory.
pub type MemResult<T> = Result<T, GuestMemoryError>;

/// Runs `f` on its own thread and returns its result, or fails the test if it takes longer than
/// `limit` (a device that spins: the thread is left behind, the test still ends).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(e) => panic!("device did not return within {limit:?} ({e}): it hangs"),
    }
}

/// A descriptor as the driver writes it into a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u32,
    /// [`NEXT`], [`WRITE`], INDIRECT (4), as is.
    pub flags: u16,
    /// The next descriptor's index (read only with [`NEXT`]).
    pub next: u16,
}

impl Desc {
    /// A descriptor of `len` bytes at `addr`.
    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        Self {
            addr,
            len,
            flags,
            next,
        }
    }
}

/// Writes `d` at `at` (a descriptor table's entry, wherever the table is).
pub fn write_desc_at(mem: &GuestMemory, at: u64, d: Desc) -> MemResult<()> {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
    raw[8..12].copy_from_slice(&d.len.to_le_bytes());
    raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
    raw[14..16].copy_from_slice(&d.next.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(at))
}

/// The driver's view of one split queue: where its parts are and what it made available.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Entries.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Avail ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    /// head -> descriptors (addr, len) of the chains [`Ring::add_chain`] made available.
    pub chains: HashMap<u16, Vec<(u64, u32)>>,
}

impl Ring {
    /// A queue of `size` entries with its parts at the given addresses.
    pub fn new(size: u16, desc: u64, avail: u64, used: u64) -> Self {
        Self {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            chains: HashMap::new(),
        }
    }

    /// A queue of `size` entries packed from `base`: table, avail ring, used ring (4-aligned).
    pub fn packed(base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Self::new(size, desc, avail, used)
    }

    /// First address past the used ring (with its avail_event).
    pub fn end(&self) -> u64 {
        self.used + 6 + 8 * u64::from(self.size)
    }

    /// The device's side of this ring: a ready queue of at most `max_size` entries.
    pub fn queue(&self, max_size: u16) -> Result<Queue, virtio_queue::Error> {
        let mut q = Queue::new(max_size)?;
        q.try_set_size(self.size)?;
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        Ok(q)
    }

    /// Zeroes both rings' flags, indices and event fields (a ring laid over used memory).
    pub fn clear(&self, mem: &GuestMemory) -> MemResult<()> {
        mem.write_slice(&[0; 4], GuestAddress(self.avail))?;
        mem.write_obj(
            0u16,
            GuestAddress(self.avail + 4 + 2 * u64::from(self.size)),
        )?;
        mem.write_slice(&[0; 4], GuestAddress(self.used))?;
        mem.write_obj(0u16, GuestAddress(self.used + 4 + 8 * u64::from(self.size)))
    }

    /// Writes descriptor `index` of the table (`index` as is: past the table is the caller's
    /// business).
    pub fn write_desc(&self, mem: &GuestMemory, index: u16, d: Desc) -> MemResult<()> {
        write_desc_at(mem, self.desc + 16 * u64::from(index), d)
    }

    /// The table entry [`Ring::add_desc`] or [`Ring::add_chain`] writes next.
    pub fn next_free(&self) -> u16 {
        self.next_desc % self.size
    }

    /// Writes `d` in the next free table entry without making it available; returns its index.
    pub fn add_desc(&mut self, mem: &GuestMemory, d: Desc) -> MemResult<u16> {
        let index = self.next_desc % self.size;
        self.next_desc = (index + 1) % self.size;
        self.write_desc(mem, index, d)?;
        Ok(index)
    }

    /// Writes a chain of buffers (addr, len, device-writable) in the next free table entries and
    /// makes it available; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> MemResult<u16> {
        let head = self.next_desc % self.size;
        let mut idx = head;
        let mut result = Ok(());
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let next = (idx + 1) % self.size;
            let mut flags = if write { WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= NEXT;
            }
            result = result.and(self.write_desc(mem, idx, Desc::new(addr, len, flags, next)));
            idx = next;
        }
        self.next_desc = idx;
        self.chains
            .insert(head, bufs.iter().map(|b| (b.0, b.1)).collect());
        result.and(self.publish(mem, head)).map(|()| head)
    }

    /// Writes `descs` as they are from table entry 0 and makes available every chain head among
    /// them (the first, and each one after a descriptor without [`NEXT`]).
    pub fn add_descs(&mut self, mem: &GuestMemory, descs: &[Desc]) -> MemResult<()> {
        for (i, d) in descs.iter().enumerate() {
            self.write_desc(mem, i as u16, *d)?;
        }
        self.next_desc = descs.len() as u16 % self.size;
        for i in 0..descs.len() {
            if i == 0 || descs[i - 1].flags & NEXT == 0 {
                self.publish(mem, i as u16)?;
            }
        }
        Ok(())
    }

    /// Puts `head` in the next avail slot and publishes it (avail.idx + 1): a new chain, or one
    /// made available again (a driver recycling its buffers).
    pub fn publish(&mut self, mem: &GuestMemory, head: u16) -> MemResult<()> {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let written = mem.write_obj(head.to_le(), GuestAddress(slot));
        fence(Ordering::SeqCst);
        written.and(mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2)))
    }

    /// Writes avail.idx as is (a driver lying about its ring).
    pub fn set_avail_idx(&mut self, mem: &GuestMemory, idx: u16) -> MemResult<()> {
        self.avail_idx = idx;
        mem.write_obj(idx.to_le(), GuestAddress(self.avail + 2))
    }

    /// Writes avail.flags (NO_INTERRUPT 1).
    pub fn set_avail_flags(&self, mem: &GuestMemory, flags: u16) -> MemResult<()> {
        mem.write_obj(flags.to_le(), GuestAddress(self.avail))
    }

    /// Writes used_event, the slot after the avail ring (VIRTIO_RING_F_EVENT_IDX).
    pub fn set_used_event(&self, mem: &GuestMemory, idx: u16) -> MemResult<()> {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_obj(idx.to_le(), GuestAddress(at))
    }

    /// The avail.idx the driver published last.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// used.idx as the device left it.
    pub fn used_idx(&self, mem: &GuestMemory) -> MemResult<u16> {
        mem.read_obj(GuestAddress(self.used + 2)).map(u16::from_le)
    }

    /// New used elements (head, len) since the last call.
    pub fn take_used(&mut self, mem: &GuestMemory) -> MemResult<Vec<(u16, u32)>> {
        let idx = self.used_idx(mem)?;
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(at))?;
            let len: u32 = mem.read_obj(GuestAddress(at + 4))?;
            out.push((u32::from_le(id) as u16, u32::from_le(len)));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        Ok(out)
    }
}

/// A test's guest driver: guest memory, one [`Ring`] per queue packed from address 0, buffers
/// handed out above them (never reused). Every error is a panic.
#[derive(Debug)]
pub struct Guest {
    /// The guest's memory (shared with the device).
    pub mem: GuestMemory,
    /// One per queue, in device queue order.
    pub rings: Vec<Ring>,
    next_buf: u64,
}

impl Guest {
    /// [`MEM_SIZE`] of fresh memory with `nqueues` queues of `size` entries; returns the
    /// device-side queues too.
    pub fn new(nqueues: usize, size: u16) -> (Self, Vec<Queue>) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        Self::on(mem, nqueues, size)
    }

    /// Like [`Guest::new`] in the caller's `mem` (its rings cleared first).
    pub fn on(mem: GuestMemory, nqueues: usize, size: u16) -> (Self, Vec<Queue>) {
        let mut rings = Vec::new();
        let mut queues = Vec::new();
        for i in 0..nqueues {
            let base = i as u64 * QUEUE_STRIDE;
            let ring = Ring::packed(base, size);
            assert!(ring.end() <= base + QUEUE_STRIDE && ring.end() <= BUF_START);
            ring.clear(&mem).unwrap();
            let q = ring.queue(size).unwrap();
            assert!(q.is_valid(&mem));
            queues.push(q);
            rings.push(ring);
        }
        let guest = Self {
            mem,
            rings,
            next_buf: BUF_START,
        };
        (guest, queues)
    }

    /// A fresh guest buffer of `len` bytes (16-byte aligned, never reused).
    pub fn alloc(&mut self, len: u32) -> u64 {
        use vm_memory::GuestMemoryBackend;
        let addr = self.next_buf;
        self.next_buf = (self.next_buf + u64::from(len) + 15) & !15;
        assert!(
            self.next_buf <= self.mem.last_addr().0,
            "test guest memory exhausted"
        );
        addr
    }

    /// Makes a chain of (addr, len, device_writable) available on queue `q`; returns its head.
    pub fn add_chain(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        self.rings[q].add_chain(&self.mem, bufs).unwrap()
    }

    /// Writes `descs` as they are from queue `q`'s table entry 0 and makes their chains
    /// available (see [`Ring::add_descs`]).
    pub fn add_descs(&mut self, q: usize, descs: &[Desc]) {
        self.rings[q].add_descs(&self.mem, descs).unwrap()
    }

    /// Makes an already-built chain available again (a driver recycling its buffers).
    pub fn repost(&mut self, q: usize, head: u16) {
        self.rings[q].publish(&self.mem, head).unwrap()
    }

    /// Writes `idx` into queue `q`'s avail.idx as is (a driver lying about its ring).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.rings[q].set_avail_idx(&self.mem, idx).unwrap()
    }

    /// The avail.idx the driver published last on queue `q`.
    pub fn avail_idx(&self, q: usize) -> u16 {
        self.rings[q].avail_idx()
    }

    /// Queue `q`'s used.idx.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.rings[q].used_idx(&self.mem).unwrap()
    }

    /// New used elements (head, len) on queue `q` since the last call.
    pub fn take_used(&mut self, q: usize) -> Vec<(u16, u32)> {
        self.rings[q].take_used(&self.mem).unwrap()
    }

    /// `len` bytes of guest memory at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Writes `data` to guest memory at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}

/// What a transport hands a device on DRIVER_OK for `queues` in `mem`, and the test's ends of
/// it: the queue eventfds (to notify) and the interrupt.
pub fn activate_context(
    mem: &GuestMemory,
    queues: Vec<Queue>,
) -> std::io::Result<(ActivateContext, Vec<EventFd>, Arc<Interrupt>)> {
    let evts = (0..queues.len())
        .map(|_| EventFd::new(EFD_NONBLOCK))
        .collect::<std::io::Result<Vec<_>>>()?;
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK)?));
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues,
        queue_events: evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<_>>()?,
        interrupt: interrupt.clone(),
    };
    Ok((ctx, evts, interrupt))
}

/// Why a [`Harness`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Creating the event manager.
    #[error("event manager: {0}")]
    EventManager(event_manager::Error),
    /// Creating the queue or interrupt eventfds.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The device refused its activation.
    #[error("activation: {0}")]
    Activate(#[source] ActivateError),
}

/// One device activated on a guest's queues and running in its own event manager, as in the
/// VMM; `G` is the driver side kept with it ([`Guest`] in the device tests).
pub struct Harness<D: VirtioDevice + MutEventSubscriber + 'static, G = Guest> {
    /// The event loop (run it with [`Harness::run`] or [`Harness::run_turns`]).
    pub em: EventManager<Arc<Mutex<D>>>,
    /// The device, as the transport and the event loop share it.
    pub dev: Arc<Mutex<D>>,
    /// The driver side.
    pub guest: G,
    /// The queues' notification eventfds (QueueNotify).
    pub queue_evts: Vec<EventFd>,
    /// The interrupt's irqfd, for [`Harness::irq_fired`].
    pub irq: EventFd,
    /// The device's interrupt (status bits, DEVICE_NEEDS_RESET).
    pub interrupt: Arc<Interrupt>,
}

impl<D: VirtioDevice + MutEventSubscriber + 'static, G> std::fmt::Debug for Harness<D, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("queues", &self.queue_evts.len())
            .field("interrupt", &self.interrupt)
            .finish_non_exhaustive()
    }
}

impl<D: VirtioDevice + MutEventSubscriber + 'static> Harness<D> {
    /// `dev` on a [`Guest`] with one queue of `size` entries per device queue, activated and run
    /// until idle.
    pub fn new(dev: D, size: u16) -> Self {
        let (guest, queues) = Guest::new(dev.queue_max_sizes().len(), size);
        let mem = guest.mem.clone();
        let mut h = Self::start(dev, &mem, queues, guest).unwrap();
        h.run();
        assert!(h.dev.lock().unwrap().is_activated());
        h
    }
}

impl<D: VirtioDevice + MutEventSubscriber + 'static, G> Harness<D, G> {
    /// Subscribes `dev` to a new event manager (as the VMM does before the guest runs) and
    /// activates it on `queues` in `mem`, as a transport does on DRIVER_OK.
    pub fn start(
        dev: D,
        mem: &GuestMemory,
        queues: Vec<Queue>,
        guest: G,
    ) -> Result<Self, HarnessError> {
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<D>>>::new().map_err(HarnessError::EventManager)?;
        em.add_subscriber(dev.clone());
        let (ctx, queue_evts, interrupt) =
            activate_context(mem, queues).map_err(HarnessError::EventFd)?;
        let irq = interrupt
            .irqfd()
            .try_clone()
            .map_err(HarnessError::EventFd)?;
        dev.lock()
            .unwrap()
            .activate(ctx)
            .map_err(HarnessError::Activate)?;
        Ok(Self {
            em,
            dev,
            guest,
            queue_evts,
            irq,
            interrupt,
        })
    }

    /// Runs the event loop until it has been idle for a short while (5 s at most).
    pub fn run(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut idle = 0;
        while idle < 3 && Instant::now() < deadline {
            if self.em.run_with_timeout(10).unwrap() == 0 {
                idle += 1;
            } else {
                idle = 0;
            }
        }
    }

    /// Up to `turns` event-loop turns without waiting, fewer if one finds nothing ready (or the
    /// event manager fails).
    pub fn run_turns(&mut self, turns: usize) {
        for _ in 0..turns {
            match self.em.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// QueueNotify for queue `q`, then [`Harness::run`].
    pub fn kick(&mut self, q: usize) {
        self.queue_evts[q].write(1).unwrap();
        self.run();
    }

    /// Whether the device raised its interrupt since the last call.
    pub fn irq_fired(&self) -> bool {
        self.irq.read().is_ok()
    }
}
